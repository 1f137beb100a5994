"""Runtime side of the models: an ONNX graph plus a JSON sidecar, scored with ONNX Runtime.

No torch here (the runtime installs only onnxruntime). The sidecar (`<model>.json` next to
`<model>.onnx`) says what kind of model it is (`anomaly` or `direction`), which features the graph reads
and in what order, which feature layout of the book it was trained against, how to standardise the
features, what each output column means and where the alert threshold is; `models/README.md` documents
the format so users can plug in their own models.

Normalisation happens here, not in the graph: `score` picks the sidecar's features out of the raw
16-value vector (FEATURE_NAMES order), computes (x - mean) / std in float64 and hands float32 to the
graph. Column 0 of an anomaly model is its score (P(anomaly), or an error such as a reconstruction
error), which procs/inference.py compares to `threshold`; column 0 of a direction model is P(up).

Scoring a batch of 1-8 rows costs a few µs: per batch size the input/output buffers and the ONNX
Runtime IO binding are made once and reused, and the gather + standardise + cast is one compiled loop
(two numpy ufunc calls cost 1.6 µs of a 6 µs call at batch 1; the loop costs 0.4 µs).

A sidecar with a `frame` (FRAME_FIELDS; scripts/train_anomaly.py's VAE) moves the lookup before and the
score after the network into two compiled per-row kernels, `_frame_pre` and `_frame_post`, because ONNX
Runtime charges 0.15-0.3 µs per node at batch 1 and these are 19 tiny nodes (a symbol lookup, one-hot
rows of tables, elementwise terms): the graph is the network only, from the frame to its P and Q heads.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numba import njit

from shm.features import FEATURE_INDEX, FEATURE_NAMES, feature_layout_hash

#: Sidecar fields every model must have, with what is expected of each (used in error messages).
REQUIRED_FIELDS: dict[str, str] = {
    "features": "non-empty list of distinct feature names from the book's layout shm.features.FEATURE_NAMES",
    "mean": "list of finite numbers, one per feature",
    "std": "list of finite numbers > 0, one per feature",
    "outputs": "non-empty list of distinct output names (anomaly: column 0 = the score; direction: column 0 = "
               "P(up))",
    "threshold": "finite number: in [0, 1] for a probability, > 0 for an error score (a direction model may omit it)",
    "version": "non-empty string",
    "trained_on": "object (seeds, seconds, symbols)",
    "metrics": "object (held-out precision / recall)",
}
#: Fields a sidecar may leave out, with their default.
OPTIONAL_FIELDS: dict[str, str] = {
    "kind": "'anomaly' (default: the kind the loader asks for, anomaly for old sidecars) or 'direction'",
    "feature_layout": "the book's FEATURE_NAMES at training time: a list of names, or feature_layout_hash()",
    "score_kind": "anomaly only: 'probability' (column 0 in [0, 1]) or 'error' (column 0 >= 0, unbounded); "
                  "default 'probability' when threshold <= 1, else 'error'",
    "history": "anomaly only: {\"kind\": \"ew_mean\", \"tau_ms\": number > 0}: the alert compares the "
               "exponentially weighted time mean of the symbol's column 0 (time constant tau_ms, each value "
               "held until the next) with threshold, not the row's own column 0; absent: the row's own",
    "frame": "object (FRAME_FIELDS): the graph is a network over a frame of columns, the lookup before it and "
             "the score after it run in compiled kernels; absent: the graph takes the standardised features "
             "and its first output is the score",
}
#: The `frame` sidecar field's kind: the only one this loader knows.
FRAME_KIND = "cvae-frame-v1"
#: The `frame` field's own fields (validated by parse_frame; documented in models/README.md). K = the
#: number of symbols, n = len(features) - 1 (features[0] is the price the symbol is looked up from).
FRAME_FIELDS: dict[str, str] = {
    "kind": f"{FRAME_KIND!r}",
    "symbols": "non-empty list of distinct names, in lookup order (highest price first): K symbols",
    "latent": "int >= 1: latent dimensions",
    "bounds": "K - 1 prices, strictly decreasing: the row is symbol j for the first bound j its price is above "
              "(the last symbol when none)",
    "centre": "K rows of n numbers: per symbol, subtracted from the standardised features[1:]",
    "inv_scale": "K rows of n numbers: per symbol, multiplied in before asinh",
    "one_hot": "finite number > 0: the frame's one-hot value at the row's symbol",
    "clip_features": "[lo, hi], lo < hi: Q's range on the feature columns (minus the log variance)",
    "clip_latent": "[lo, hi], lo < hi: Q's range on the KL columns (the latent log variance)",
    "score_scale": "K numbers: r = max(score_scale[k] * sum(F) + score_offset[k], 0)",
    "score_offset": "K numbers",
}
KINDS = ("anomaly", "direction")
SCORE_KINDS = ("probability", "error")
#: A direction model's threshold when its sidecar has none (P(up) > 0.5: predicts up).
DIRECTION_THRESHOLD = 0.5


#: Batch sizes with a cached IO binding; larger batches still work, with a binding made per call.
MAX_CACHED_BATCH = 64


#: The checkout's root: relative model paths that do not exist from the working directory are tried here.
ROOT = Path(__file__).resolve().parents[1]


def resolve_model_path(path: str | Path) -> Path:
    """`path`, or ROOT / path when it is relative and only exists there (the defaults work from any directory)."""
    p = Path(path)
    if not p.is_absolute() and not p.is_file() and (ROOT / p).is_file():
        return ROOT / p
    return p


def _bad(path: Path, name: str, expected: str, found: Any) -> ValueError:
    text = repr(found)
    if len(text) > 120:  # a long list would drown the message
        text = text[:117] + "..."
    return ValueError(f"{path}: sidecar field '{name}': expected {expected}, found {text}")


def _numbers(path: Path, meta: dict[str, Any], name: str, n: int, positive: bool) -> np.ndarray:
    v = meta[name]
    what = f"list of {n} finite numbers" + (" > 0" if positive else "")
    if not isinstance(v, list):
        raise _bad(path, name, what, type(v).__name__)
    if len(v) != n:
        raise _bad(path, name, what, f"{len(v)} items")
    for i, a in enumerate(v):
        # bool is an int subclass: refuse it, a true/false here is a mistake
        if isinstance(a, bool) or not isinstance(a, int | float) or not math.isfinite(a) or (positive and a <= 0):
            raise _bad(path, f"{name}[{i}]", "finite number" + (" > 0" if positive else ""), a)
    return np.asarray(v, np.float64)


def _names(path: Path, meta: dict[str, Any], name: str) -> list[str]:
    v = meta[name]
    if not isinstance(v, list) or not v or not all(isinstance(s, str) and s for s in v):
        raise _bad(path, name, REQUIRED_FIELDS[name], v)
    if len(set(v)) != len(v):
        dup = sorted({s for s in v if v.count(s) > 1})
        raise _bad(path, name, "distinct names", f"duplicates {dup}")
    return list(v)


def _layout_diff(declared: list[str], current: tuple[str, ...]) -> str:
    """The feature names whose position differs between two layouts, e.g. "'ofi' was 6, now 7"."""
    parts = []
    for name in dict.fromkeys([*declared, *current]):  # both layouts' names, once each, in order
        was = declared.index(name) if name in declared else None
        now = current.index(name) if name in current else None
        if was == now:
            continue
        if now is None:
            parts.append(f"{name!r} (index {was}) is not in the book's layout")
        elif was is None:
            parts.append(f"{name!r} (index {now}) is new in the book's layout")
        else:
            parts.append(f"{name!r} was index {was}, is now {now}")
    return "; ".join(parts)


def _check_layout(path: Path, meta: dict[str, Any], features: list[str]) -> list[str] | str | None:
    """The sidecar's `feature_layout`, refused when it is not the book's current FEATURE_NAMES."""
    declared = meta.get("feature_layout")
    if declared is None:
        return None  # an old sidecar: its feature names are still checked one by one
    current = list(FEATURE_NAMES)
    if isinstance(declared, str):
        if declared == feature_layout_hash():
            return declared
        raise ValueError(
            f"{path}: sidecar field 'feature_layout': expected the book's feature layout {feature_layout_hash()} "
            f"= {current}, found {declared!r}: the model was trained against another layout of the book's "
            f"features; the features it reads, {features}, may have moved or changed meaning since. Retrain it "
            f"on the current layout")
    if not isinstance(declared, list) or not all(isinstance(x, str) for x in declared):
        raise _bad(path, "feature_layout", OPTIONAL_FIELDS["feature_layout"], declared)
    if declared != current:
        # features are checked by name above, so every one the model reads is in `current`
        moved = [f for f in features if f not in declared or declared.index(f) != current.index(f)]
        raise ValueError(
            f"{path}: sidecar field 'feature_layout': expected the book's feature layout {current}, found the "
            f"layout the model was trained against {declared} ({_layout_diff(declared, FEATURE_NAMES)}); "
            f"features the model reads that moved or are new: {moved}. Retrain it on the current layout")
    return declared


def parse_sidecar(meta: Any, path: str | Path = "<sidecar>", kind: str | None = None) -> dict[str, Any]:
    """Validate a decoded sidecar; returns the checked fields (numpy mean/std, feature_index, kind, ...).

    `kind` is the kind the caller loads the model as ('anomaly' or 'direction'): a sidecar that declares
    another kind is refused, one that declares none is taken as that kind (None: anomaly).
    Every problem raises ValueError naming the field, what was expected and what was found.
    """
    path = Path(path)
    if not isinstance(meta, dict):
        raise _bad(path, "<top level>", "JSON object", type(meta).__name__)
    declared_kind = meta.get("kind")
    if declared_kind is not None and declared_kind not in KINDS:
        raise _bad(path, "kind", OPTIONAL_FIELDS["kind"], declared_kind)
    if kind is not None and declared_kind is not None and declared_kind != kind:
        raise _bad(path, "kind", f"{kind!r} (the model is loaded as the {kind} model)", declared_kind)
    model_kind = declared_kind or kind or "anomaly"
    for name, expected in REQUIRED_FIELDS.items():
        if name == "threshold" and model_kind == "direction":
            continue  # P(up) needs no alert threshold; DIRECTION_THRESHOLD when absent
        if name not in meta:
            raise _bad(path, name, expected, "missing")
    features = _names(path, meta, "features")
    unknown = [f for f in features if f not in FEATURE_INDEX]
    if unknown:
        # not through _bad: both layouts are named in full, however long
        trained = meta.get("feature_layout")
        also = ""
        if isinstance(trained, list) and all(isinstance(x, str) for x in trained):
            diff = _layout_diff(trained, FEATURE_NAMES)
            also = f"; the model was trained against the layout {trained}" + (f" ({diff})" if diff else "")
        elif trained is not None:
            also = f"; the model was trained against the layout {trained!r}"
        raise ValueError(f"{path}: sidecar field 'features': expected names from the book's feature layout "
                         f"{list(FEATURE_NAMES)}, found unknown {unknown}{also}")
    layout = _check_layout(path, meta, features)
    n = len(features)
    mean = _numbers(path, meta, "mean", n, positive=False)
    std = _numbers(path, meta, "std", n, positive=True)
    outputs = _names(path, meta, "outputs")
    thr = meta.get("threshold", DIRECTION_THRESHOLD)
    if isinstance(thr, bool) or not isinstance(thr, int | float) or not math.isfinite(thr):
        raise _bad(path, "threshold", REQUIRED_FIELDS["threshold"], thr)
    score_kind = meta.get("score_kind")
    if model_kind == "direction":
        if score_kind not in (None, "probability"):
            raise _bad(path, "score_kind", "'probability' or absent (column 0 of a direction model is P(up))",
                       score_kind)
        score_kind = "probability"
    elif score_kind is None:
        score_kind = "probability" if 0 <= thr <= 1 else "error"  # a threshold above 1 is no probability
    elif score_kind not in SCORE_KINDS:
        raise _bad(path, "score_kind", OPTIONAL_FIELDS["score_kind"], score_kind)
    if score_kind == "probability" and not 0 <= thr <= 1:
        raise _bad(path, "threshold", "finite number in [0, 1] (column 0 is a probability; a model whose "
                   "column 0 is an unbounded score declares \"score_kind\": \"error\")", thr)
    if score_kind == "error" and not thr > 0:
        raise _bad(path, "threshold", "finite number > 0 (score_kind 'error': alert when column 0 > threshold)",
                   thr)
    history_tau_ms = _history(path, meta.get("history"), model_kind)
    frame = None
    if meta.get("frame") is not None:
        if model_kind != "anomaly":
            raise _bad(path, "frame", "absent (a direction model's graph takes the standardised features)",
                       meta["frame"])
        if len(outputs) != 2:
            raise _bad(path, "outputs", "2 names (a frame model's score kernel writes [r / (1 + r), ln(1 + r)])",
                       outputs)
        frame = parse_frame(path, meta["frame"], n, mean, std, [FEATURE_INDEX[f] for f in features])
    version = meta["version"]
    if not isinstance(version, str) or not version:
        raise _bad(path, "version", REQUIRED_FIELDS["version"], version)
    for name in ("trained_on", "metrics"):
        if not isinstance(meta[name], dict):
            raise _bad(path, name, REQUIRED_FIELDS[name], type(meta[name]).__name__)
    return {"features": features, "feature_index": [FEATURE_INDEX[f] for f in features], "mean": mean,
            "std": std, "outputs": outputs, "threshold": float(thr), "version": version,
            "trained_on": meta["trained_on"], "metrics": meta["metrics"], "kind": model_kind,
            "kind_declared": declared_kind is not None, "score_kind": score_kind, "feature_layout": layout,
            "history_tau_ms": history_tau_ms, "frame": frame}


def _history(path: Path, h: Any, kind: str) -> float:
    """The sidecar's `history`: its tau_ms, 0.0 when absent (alert on each row's own column 0)."""
    if h is None:
        return 0.0
    what = OPTIONAL_FIELDS["history"]
    if kind != "anomaly":
        raise _bad(path, "history", "absent (a direction model has no alert history)", h)
    if not isinstance(h, dict) or h.get("kind") != "ew_mean":
        raise _bad(path, "history", what, h)
    tau = h.get("tau_ms")
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not math.isfinite(tau) or tau <= 0:
        raise _bad(path, "history.tau_ms", "finite number > 0", tau)
    return float(tau)


@njit(cache=True, nogil=True)
def ew_step(mean: float, prev: float, dt_ms: float, tau_ms: float) -> float:
    """One step of the alert history: the time mean decays by exp(-dt / tau) towards the previous value,
    which held for those dt ms (so it does not depend on how often it is sampled)."""
    a = math.exp(-max(dt_ms, 0.0) / tau_ms)
    return mean * a + prev * (1.0 - a)


@njit(cache=True, nogil=True)
def ew_history_into(t_ms: np.ndarray, symbol: np.ndarray, level: np.ndarray, tau_ms: float, state: np.ndarray,
                    out: np.ndarray) -> None:
    """out[i] = the alert history of row i's symbol (rows in time order per symbol): what the inference
    stage computes pass by pass. state[symbol] = (mean, previous value, its time, seen), carried across
    calls; a symbol's first row starts the mean at its own value."""
    for i in range(len(level)):
        e = state[symbol[i]]
        e[0] = ew_step(e[0], e[1], t_ms[i] - e[2], tau_ms) if e[3] > 0.0 else level[i]
        e[1] = level[i]
        e[2] = t_ms[i]
        e[3] = 1.0
        out[i] = e[0]


def ew_history(t_ms: np.ndarray, symbol: np.ndarray, level: np.ndarray, tau_ms: float,
               state: np.ndarray | None = None) -> np.ndarray:
    """`ew_history_into` on fresh state (or on `state`, (n_symbols, 4) float64, to continue a run)."""
    sym = np.ascontiguousarray(symbol, np.int64)
    if state is None:
        state = np.zeros((int(sym.max()) + 1 if len(sym) else 1, 4))
    out = np.empty(len(sym), np.float64)
    ew_history_into(np.ascontiguousarray(t_ms, np.float64), sym, np.ascontiguousarray(level, np.float64),
                    float(tau_ms), state, out)
    return out


def session_options(intra_op_threads: int = 1) -> ort.SessionOptions:
    """ONNX Runtime options for a latency-bound stage on shared cores: few threads, no spinning."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # a spinning intra-op pool would burn the core the other stages share
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


@njit(cache=True, nogil=True)
def _standardise(x: np.ndarray, idx: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, out: np.ndarray) -> int:
    """out[i, j] = (x[i, idx[j]] - mean[j]) * inv_std[j], in float64, stored as float32; returns the rows."""
    n = out.shape[0]
    for i in range(n):
        for j in range(idx.shape[0]):
            out[i, j] = (x[i, idx[j]] - mean[j]) * inv_std[j]
    return n


def _frame_numbers(path: Path, spec: dict[str, Any], name: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """frame.<name> as a float64 array of `shape`; ValueError naming the field, the shape expected and found."""
    v = spec.get(name)
    field = f"frame.{name}"
    expected = (" x ".join(map(str, shape)) + " finite numbers" if shape else "a finite number") + f" ({what})"
    if v is None:
        raise _bad(path, field, expected, "missing")
    if isinstance(v, list) and v and all(isinstance(r, list) for r in v) and len({len(r) for r in v}) > 1:
        raise _bad(path, field, expected, f"rows of {[len(r) for r in v]} items")
    try:
        a = np.asarray(v, np.float64)
    except (TypeError, ValueError):  # strings, nested deeper
        raise _bad(path, field, expected, v) from None
    if a.shape != shape:
        raise _bad(path, field, expected, f"shape {' x '.join(map(str, a.shape)) or 'scalar'}")
    if not np.isfinite(a).all() or any(isinstance(b, bool) for b in np.asarray(v, object).ravel()):
        raise _bad(path, field, expected, v)
    return a


def parse_frame(path: str | Path, spec: Any, n_features: int, mean: np.ndarray, std: np.ndarray,
                feature_index: list[int]) -> Frame:
    """Validate a sidecar's `frame` (FRAME_FIELDS) for a model reading `n_features` features; ValueError
    naming the field, what was expected and what was found."""
    path = Path(path)
    if not isinstance(spec, dict):
        raise _bad(path, "frame", OPTIONAL_FIELDS["frame"], type(spec).__name__)
    if spec.get("kind") != FRAME_KIND:
        raise _bad(path, "frame.kind", FRAME_FIELDS["kind"], spec.get("kind", "missing"))
    syms = spec.get("symbols")
    if not isinstance(syms, list) or not syms or not all(isinstance(x, str) and x for x in syms) \
            or len(set(syms)) != len(syms):
        raise _bad(path, "frame.symbols", FRAME_FIELDS["symbols"], syms)
    lat = spec.get("latent")
    if isinstance(lat, bool) or not isinstance(lat, int) or lat < 1:
        raise _bad(path, "frame.latent", FRAME_FIELDS["latent"], lat)
    if n_features < 2:
        raise _bad(path, "features", "the lookup price and at least one feature (the sidecar has a frame)",
                   f"{n_features} names")
    k, n = len(syms), n_features - 1
    rows = f"frame.symbols x features[1:] = {k} x {n}"
    bounds = _frame_numbers(path, spec, "bounds", (k - 1,), "K - 1 = len(frame.symbols) - 1")
    if (np.diff(bounds) >= 0).any():
        raise _bad(path, "frame.bounds", FRAME_FIELDS["bounds"], spec["bounds"])
    centre = _frame_numbers(path, spec, "centre", (k, n), rows)
    inv_scale = _frame_numbers(path, spec, "inv_scale", (k, n), rows)
    one_hot = float(_frame_numbers(path, spec, "one_hot", (), "> 0"))
    if not one_hot > 0:
        raise _bad(path, "frame.one_hot", FRAME_FIELDS["one_hot"], one_hot)
    clips = []
    for name in ("clip_features", "clip_latent"):
        c = _frame_numbers(path, spec, name, (2,), "[lo, hi]")
        if not c[0] < c[1]:
            raise _bad(path, f"frame.{name}", FRAME_FIELDS[name], spec[name])
        clips.append(c)
    scale = _frame_numbers(path, spec, "score_scale", (k,), "one per symbol of frame.symbols")
    offset = _frame_numbers(path, spec, "score_offset", (k,), "one per symbol of frame.symbols")
    return Frame(k, n, lat, feature_index, mean, std, bounds, centre, inv_scale, one_hot, *clips, scale, offset)


class Frame:
    """A sidecar's `frame`: the constants of the pre and post kernels, packed for them.

    The frame has 2K + n + 2 latent + 1 columns: K lookup columns (0 here: the network's weights there
    are 0), n features, latent KL and latent mu columns (0 here: the network writes them), K one-hot
    columns and a 0. The graph maps the frame to P and Q of the same width; the post kernel reads the
    symbol back from P's one-hot columns (the network passes them through), so it needs only P and Q.
    """

    def __init__(self, k: int, n: int, latent: int, feature_index: list[int], mean: np.ndarray, std: np.ndarray,
                 bounds: np.ndarray, centre: np.ndarray, inv_scale: np.ndarray, one_hot: float,
                 clip_features: np.ndarray, clip_latent: np.ndarray, score_scale: np.ndarray,
                 score_offset: np.ndarray) -> None:
        self.k, self.n, self.latent = k, n, latent
        self.width = 2 * k + n + 2 * latent + 1
        # the lookup, centre and scale run in float32 as the graph did (bounds, centre and 1/scale are float32
        # values in the sidecar): so a price at a bound goes where the graph sent it, and u is the graph's u
        f32 = [np.asarray(a, np.float32).astype(np.float64) for a in (bounds, centre, inv_scale)]
        # one float64 vector and one int64 vector: a numba call costs about 0.09 µs per array argument
        self.c = np.concatenate([mean, 1.0 / np.asarray(std, np.float64), f32[0], f32[1].ravel(), f32[2].ravel(),
                                 [one_hot], clip_features, clip_latent, score_scale, score_offset]).astype(np.float64)
        self.lay = np.asarray([k, n, latent, self.width, *feature_index], np.int64)
        self.digest = b""  # set by Model.load: the field's canonical JSON, which model_id covers

    def pre(self, x: np.ndarray) -> np.ndarray:
        """x (rows, 16) raw float64 features -> the graph's float32 input frame (a new array)."""
        out = np.zeros((len(x), self.width), np.float32)
        _frame_pre(np.asarray(x, np.float64), self.lay, self.c, out)
        return out

    def post(self, p: np.ndarray, q: np.ndarray) -> np.ndarray:
        """The graph's P and Q -> (rows, 2) float32 [r / (1 + r), ln(1 + r)] (a new array)."""
        pq = np.stack([np.asarray(p, np.float32), np.asarray(q, np.float32)])
        out = np.zeros((pq.shape[1], 2), np.float32)
        _frame_post(pq, self.lay, self.c, out)
        return out


@njit(cache=True, nogil=True)
def _frame_pre(x: np.ndarray, lay: np.ndarray, c: np.ndarray, out: np.ndarray) -> int:
    """Per row: z = (x[idx] - mean) / std; the symbol j = the first bound z[0] is above (float32, as the
    graph's Sign of mid - bound); out[feature i] = asinh((z[1 + i] - centre[j, i]) * inv_scale[j, i]) in
    float32, out[one-hot j] = one_hot, every other column 0 (a price that is not finite: NaN features, so
    NaN scores). Returns the rows."""
    k, n, w = lay[0], lay[1], lay[3]
    nf = n + 1
    o_b = 2 * nf
    o_c = o_b + k - 1
    o_s = o_c + k * n
    one_hot = np.float32(c[o_s + k * n])
    o_oh = k + n + 2 * lay[2]
    for r in range(out.shape[0]):
        for col in range(w):
            out[r, col] = 0.0
        mid = np.float32((x[r, lay[4]] - c[0]) * c[nf])
        if not math.isfinite(mid):
            for i in range(n):
                out[r, k + i] = math.nan  # no symbol without a price: NaN out, as the 35-node graph gave
            continue
        j = k - 1
        for b in range(k - 1):
            if mid > np.float32(c[o_b + b]):
                j = b
                break
        for i in range(n):
            z = np.float32((x[r, lay[5 + i]] - c[1 + i]) * c[nf + 1 + i])
            v = np.float32(z - np.float32(c[o_c + j * n + i]))
            out[r, k + i] = math.asinh(np.float32(v * np.float32(c[o_s + j * n + i])))
        out[r, o_oh + j] = one_hot
    return out.shape[0]


@njit(cache=True, nogil=True)
def _frame_post(pq: np.ndarray, lay: np.ndarray, c: np.ndarray, out: np.ndarray) -> int:
    """Per row, from P = pq[0] and Q = pq[1]: the symbol j = the one-hot column of P that is not 0; with q
    clipped per column group, F = P^2 exp(q) - q summed over the feature, KL and mu columns (every NLL and
    KL term, in float64), r = max(score_scale[j] * sum + score_offset[j], 0) -> [r / (1 + r), ln(1 + r)].
    NaN in, NaN out. Returns the rows."""
    k, n, lat = lay[0], lay[1], lay[2]
    nf = n + 1
    o_x = 2 * nf + k - 1 + 2 * k * n + 1
    lo_x, hi_x, lo_z, hi_z = c[o_x], c[o_x + 1], c[o_x + 2], c[o_x + 3]
    o_sc = o_x + 4
    o_oh = k + n + 2 * lat
    p, q = pq[0], pq[1]
    for r in range(out.shape[0]):
        j = -1
        for s in range(k):
            if p[r, o_oh + s] != 0.0:
                j = s
                break
        acc = 0.0
        for col in range(k, k + n + 2 * lat):
            qq = float(q[r, col])
            if col < k + n:
                qq = min(max(qq, lo_x), hi_x)
            elif col < k + n + lat:
                qq = min(max(qq, lo_z), hi_z)
            pp = float(p[r, col])
            # Q is exactly 0 on the mu columns: exp only where it can differ from 1 (20 ns each)
            acc += pp * pp * (math.exp(qq) if qq != 0.0 else 1.0) - qq
        if j < 0:
            v = math.nan  # no symbol: a NaN came through the network
        else:
            v = c[o_sc + j] * acc + c[o_sc + k + j]
            if v < 0.0:
                v = 0.0
        out[r, 0] = v / (1.0 + v)
        out[r, 1] = math.log1p(v)
    return out.shape[0]


def _bind_outputs(binding: Any, names: list[str], bufs: list[np.ndarray]) -> None:
    for name, buf in zip(names, bufs, strict=True):
        binding.bind_output(name, "cpu", 0, np.float32, buf.shape, buf.ctypes.data)


class _Slot:
    """Input/output buffers and IO binding for one batch size (reused by every call with that size)."""

    __slots__ = ("binding", "out", "pq", "x32")

    def __init__(self, model: Model, n: int) -> None:
        self.x32 = np.zeros((n, model.graph_width), np.float32)
        self.out = np.zeros((n, model.n_outputs), np.float32)
        # a frame model's graph writes P and Q into one buffer, so that the post kernel takes one argument
        self.pq = np.zeros((2, n, model.graph_width), np.float32) if model.frame is not None else self.out[None]
        self.binding = model.session.io_binding()
        # both bound to our own numpy buffers: ONNX Runtime reads x32 and writes out (or pq) in place, no copies
        self.binding.bind_cpu_input(model._in, self.x32)
        _bind_outputs(self.binding, model.graph_outputs, list(self.pq))


def _check_frame_graph(path: Path, side: Path, frame: Frame, ins: list[Any], outs: list[Any]) -> None:
    """A frame model's graph: one float32 input [batch, width] and P, Q float32 [batch, width] first."""
    w = frame.width
    what = (f"frame of {w} columns (2 x {frame.k} symbols + {frame.n} features + 2 x {frame.latent} latent + 1, "
            f"from the sidecar's 'frame')")
    if len(ins) != 1 or ins[0].type != "tensor(float)" or len(ins[0].shape) != 2 \
            or (isinstance(ins[0].shape[1], int) and ins[0].shape[1] != w):
        found = [(i.name, i.type, i.shape) for i in ins]
        raise ValueError(f"{path}: graph inputs: expected one float32 tensor [batch, {w}], the {what}; found {found}")
    bad = len(outs) < 2 or any(o.type != "tensor(float)" or len(o.shape) != 2
                               or (isinstance(o.shape[1], int) and o.shape[1] != w) for o in outs[:2])
    if bad:
        found = [(o.name, o.type, o.shape) for o in outs]
        raise ValueError(f"{path}: graph outputs: expected P and Q, float32 [batch, {w}] each, first (the {what}; "
                         f"{side} has a 'frame'), found {found}")


class Model:
    """An ONNX model plus its sidecar; `score` maps raw feature rows to the graph's output columns."""

    def __init__(self, path: Path, session: ort.InferenceSession, meta: dict[str, Any], model_id: int) -> None:
        self.path = path
        self.session = session
        self.kind: str = meta["kind"]
        #: False when the sidecar has no `kind` and it was taken from the loader (old sidecars)
        self.kind_declared: bool = meta["kind_declared"]
        self.score_kind: str = meta["score_kind"]
        self.feature_layout: list[str] | str | None = meta["feature_layout"]
        self.features: list[str] = meta["features"]
        self.feature_index: list[int] = meta["feature_index"]
        self.mean: np.ndarray = meta["mean"]
        self.std: np.ndarray = meta["std"]
        self.inv_std: np.ndarray = 1.0 / self.std
        self.outputs: list[str] = meta["outputs"]
        self.n_outputs: int = len(self.outputs)
        self.threshold: float = meta["threshold"]
        #: > 0: alerts compare the symbol's EW time mean of column 0 (this time constant) with threshold
        self.history_tau_ms: float = meta["history_tau_ms"]
        self.version: str = meta["version"]
        self.trained_on: dict[str, Any] = meta["trained_on"]
        self.metrics: dict[str, Any] = meta["metrics"]
        self.model_id: int = model_id
        self.graph_bytes = b""  # set by load: SCORE.model_id of a model pair continues the crc over both
        #: the sidecar's `frame` (None: the graph takes the standardised features, its first output is the score)
        self.frame: Frame | None = meta.get("frame")
        #: the graph's input width: len(features), or the frame's
        self.graph_width: int = self.frame.width if self.frame is not None else len(self.features)
        self._idx = np.asarray(self.feature_index, np.intp)
        self._in = session.get_inputs()[0].name
        #: the graph outputs score binds: the first, or a frame model's P and Q
        self.graph_outputs: list[str] = [o.name for o in session.get_outputs()[:2 if self.frame is not None else 1]]
        self._out = self.graph_outputs[0]
        self._slots: dict[int, _Slot] = {}

    @classmethod
    def load(cls, path: str | Path, intra_op_threads: int = 1, kind: str | None = None) -> Model:
        """Load `path` (ONNX) and `path.with_suffix('.json')` (sidecar); ValueError if they disagree.

        `kind` ('anomaly' or 'direction'): what the caller uses the model as; a sidecar declaring another
        kind is refused (None: whatever the sidecar says, anomaly when it says nothing)."""
        path = Path(path)
        side = path.with_suffix(".json")
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise FileNotFoundError(f"model {path}: {e.strerror}") from e
        try:
            meta_raw = json.loads(side.read_text())
        except OSError as e:
            raise FileNotFoundError(f"model sidecar {side}: {e.strerror}") from e
        except json.JSONDecodeError as e:
            raise ValueError(f"{side}: not valid JSON: {e}") from e
        meta = parse_sidecar(meta_raw, side, kind)
        if not isinstance(intra_op_threads, int) or intra_op_threads < 0:
            raise ValueError(f"intra_op_threads: expected int >= 0, found {intra_op_threads!r}")
        sess = ort.InferenceSession(raw, session_options(intra_op_threads), providers=["CPUExecutionProvider"])
        ins, outs = sess.get_inputs(), sess.get_outputs()
        k_in, k_out = len(meta["features"]), len(meta["outputs"])
        frame: Frame | None = meta["frame"]
        if frame is not None:
            _check_frame_graph(path, side, frame, ins, outs)
        if len(ins) != 1 or ins[0].type != "tensor(float)" or len(ins[0].shape) != 2:
            found = [(i.name, i.type, i.shape) for i in ins]
            raise ValueError(f"{path}: graph inputs: expected one float32 tensor [batch, {k_in}], found {found}")
        if not outs or outs[0].type != "tensor(float)" or len(outs[0].shape) != 2:
            found = [(o.name, o.type, o.shape) for o in outs]
            raise ValueError(f"{path}: graph outputs: expected float32 [batch, {k_out}] first, found {found}")
        if frame is None and isinstance(ins[0].shape[1], int) and ins[0].shape[1] != k_in:
            raise _bad(side, "features", f"{ins[0].shape[1]} names (the graph's input width)", f"{k_in} names")
        if frame is None and isinstance(outs[0].shape[1], int) and outs[0].shape[1] != k_out:
            raise _bad(side, "outputs", f"{outs[0].shape[1]} names (the graph's output width)", f"{k_out} names")
        # crc32 of the graph bytes: a u32 that changes whenever the model does (SCORE.model_id); a frame's
        # constants are the model too, so the crc continues over them
        crc = zlib.crc32(raw)
        if frame is not None:
            frame.digest = json.dumps(meta_raw["frame"], sort_keys=True, separators=(",", ":")).encode()
            crc = zlib.crc32(frame.digest, crc)
        model = cls(path, sess, meta, crc & 0xFFFFFFFF)
        model.graph_bytes = raw
        return model

    def _slot(self, n: int) -> _Slot:
        s = self._slots.get(n)
        if s is None:
            s = _Slot(self, n)
            if n <= MAX_CACHED_BATCH:
                self._slots[n] = s
        return s

    def graph_input(self, x: np.ndarray) -> np.ndarray:
        """x (n, 16) raw float64 features -> what score feeds the graph (float32, a new array): the
        standardised features, or a frame model's frame."""
        x = np.asarray(x, np.float64)
        if self.frame is not None:
            return self.frame.pre(x)
        out = np.zeros((len(x), len(self._idx)), np.float32)
        _standardise(x, self._idx, self.mean, self.inv_std, out)
        return out

    def from_graph(self, outs: list[np.ndarray]) -> np.ndarray:
        """The graph's outputs (graph_outputs, in order) -> score's (n, k) columns (a new array)."""
        if self.frame is not None:
            return self.frame.post(outs[0], outs[1])
        return np.array(outs[0], np.float32)

    def score(self, x: np.ndarray, *, copy: bool = True) -> np.ndarray:
        """x (n, 16) raw features in FEATURE_NAMES order (float64, may be a strided view) -> (n, k) float32.

        Column j means `outputs[j]`. With copy=False the result is the model's own output buffer for
        batch size n: valid until the next call with the same n (the inference stage copies it into
        SCORE records at once, so it skips the copy).
        """
        if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"score: x: expected shape (n, {len(FEATURE_NAMES)}), found {x.shape}")
        if x.dtype != np.float64:
            x = x.astype(np.float64)  # rare path (callers normally pass FEATURES.values, float64)
        n = x.shape[0]
        if n == 0:
            return np.zeros((0, self.n_outputs), np.float32)
        s = self._slots.get(n) or self._slot(n)
        f = self.frame
        if f is None:
            _standardise(x, self._idx, self.mean, self.inv_std, s.x32)
            self.session.run_with_iobinding(s.binding)
        else:
            _frame_pre(x, f.lay, f.c, s.x32)
            self.session.run_with_iobinding(s.binding)
            _frame_post(s.pq, f.lay, f.c, s.out)
        # a copy by default: the slot's buffer is overwritten by the next call of the same size
        return s.out.copy() if copy else s.out

    def level(self, col0: np.ndarray | float) -> np.ndarray | float:
        """Column 0 as a level in [0, 1] (SCORE_ANOMALY): itself for a probability, min(col0 / threshold, 1)
        for an error score, so that 1 is the alert threshold."""
        if self.score_kind == "probability":
            return np.clip(col0, 0.0, 1.0)
        return np.clip(np.asarray(col0, np.float64) / self.threshold, 0.0, 1.0)

    def alert_level(self, col0: np.ndarray, t_ms: np.ndarray, symbol: np.ndarray,
                    state: np.ndarray | None = None) -> np.ndarray:
        """What the alert compares with `threshold`, per row (rows in time order per symbol, as the stage sees
        them): column 0 itself, or its EW time mean per symbol when the sidecar has a `history` (`state`
        carries it across calls, see ew_history)."""
        c = np.asarray(col0, np.float64)
        if self.history_tau_ms <= 0:
            return c
        return ew_history(t_ms, symbol, c, self.history_tau_ms, state)

    def __repr__(self) -> str:
        return (f"Model({str(self.path)!r}, kind={self.kind!r}, version={self.version!r}, "
                f"model_id={self.model_id:#010x}, features={len(self.features)}, outputs={self.outputs}, "
                f"threshold={self.threshold:.4g}, score_kind={self.score_kind!r}"
                + (f", history_tau_ms={self.history_tau_ms:g})" if self.history_tau_ms > 0 else ")"))


class ModelPair:
    """The anomaly and direction models as one ONNX Runtime session: one call scores a batch with both.

    ONNX Runtime costs about 1.7 µs per run before the first operator (measured with an Identity graph), so
    merging the two graphs (`onnx.compose.merge_models`, names prefixed "a/" and "d/", the outputs each
    model's score binds kept) saves one of those, plus one Python call, per pass. `build` returns None
    without the `onnx` package (the runtime needs only onnxruntime) or when the graphs do not merge; the
    stage then runs the two sessions. Each model's `score` is unchanged (evaluation and reports use it), and
    a frame model's pre and post kernels run around the merged call as around its own.
    """

    def __init__(self, anomaly: Model, direction: Model, session: ort.InferenceSession) -> None:
        self.anomaly = anomaly
        self.direction = direction
        self.session = session
        self._slots: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, Any]] = {}

    @classmethod
    def build(cls, anomaly: Model, direction: Model, intra_op_threads: int = 1) -> tuple[ModelPair | None, str]:
        """(the pair, "") or (None, why not)."""
        try:
            import onnx
            from onnx import compose
        except ImportError:
            return None, "the onnx package is not installed (pip install onnx): two ONNX Runtime calls per pass"
        try:
            a = compose.add_prefix(onnx.load_from_string(anomaly.graph_bytes), "a/")
            d = compose.add_prefix(onnx.load_from_string(direction.graph_bytes), "d/")
            keep = [*("a/" + n for n in anomaly.graph_outputs), *("d/" + n for n in direction.graph_outputs)]
            merged = compose.merge_models(a, d, io_map=[], outputs=keep)
            sess = ort.InferenceSession(merged.SerializeToString(), session_options(intra_op_threads),
                                        providers=["CPUExecutionProvider"])
        except Exception as e:  # any refusal (opsets, IR versions): the two sessions still work
            return None, f"the two graphs do not merge ({type(e).__name__}: {e}): two ONNX Runtime calls per pass"
        return cls(anomaly, direction, sess), ""

    def _slot(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, Any]:
        s = self._slots.get(n)
        if s is None:
            a, d = self.anomaly, self.direction
            xa = np.zeros((n, a.graph_width), np.float32)
            xd = np.zeros((n, d.graph_width), np.float32)
            oa = np.zeros((n, a.n_outputs), np.float32)
            od = np.zeros((n, d.n_outputs), np.float32)
            # a frame model's P and Q (else oa itself), as in _Slot
            pq = np.zeros((2, n, a.graph_width), np.float32) if a.frame is not None else oa[None]
            b = self.session.io_binding()
            # bound to our own buffers: ONNX Runtime reads xa, xd and writes pq (or oa), od in place
            b.bind_cpu_input("a/" + a._in, xa)
            b.bind_cpu_input("d/" + d._in, xd)
            _bind_outputs(b, ["a/" + name for name in a.graph_outputs], list(pq))
            _bind_outputs(b, ["d/" + d._out], [od])
            s = (xa, xd, pq, oa, od, b)
            if n <= MAX_CACHED_BATCH:
                self._slots[n] = s
        return s

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x (n, 16) float64 raw features -> (anomaly outputs, direction outputs), the pair's own buffers for
        batch size n (valid until the next call with the same n), as Model.score(copy=False) of each."""
        n = x.shape[0]
        xa, xd, pq, oa, od, b = self._slots.get(n) or self._slot(n)
        a, d = self.anomaly, self.direction
        f = a.frame
        if f is None:
            _standardise(x, a._idx, a.mean, a.inv_std, xa)
        else:
            _frame_pre(x, f.lay, f.c, xa)
        _standardise(x, d._idx, d.mean, d.inv_std, xd)
        self.session.run_with_iobinding(b)
        if f is not None:
            _frame_post(pq, f.lay, f.c, oa)
        return oa, od
