"""Evaluate a shipped model on captures or simulator runs, and measure what its anomaly flag does to
the strategy. Used by scripts/evaluate.py and scripts/model_report.py; the metric functions themselves
are in procs/metrics_ml.py.

The sidecar's "kind" decides the evaluation (a sidecar without one is an anomaly model):

- **anomaly** on labelled rows (simulator seeds, or a capture with its labels file): row level
  (precision, recall, F1, ROC-AUC of column 0 against "in a labelled window"), per kind (the rows of
  one kind against the normal rows, other kinds left out), window level (labelled windows with at least
  one alert) and episode level (alerts of one symbol at most 500 ms apart, i.e. one strategy pause:
  procs.metrics_ml.merge_episodes, as in scripts/train_anomaly.py, that overlap a window). With a sidecar
  `history`, "score" is the per-symbol EW time mean of column 0 that the inference stage alerts on. On a capture without
  labels there is nothing to score against: only the alert rate and the score distribution.
- **direction**: labels `Dataset.direction(horizon_ms)` (the sidecar's "horizon_ms", default 0: the next
  change of the mid); rows whose mid does not move are excluded and counted. Hit rate of
  "up iff P(up) > threshold" with a Wilson 95 % interval, log loss, ROC-AUC, and baselines (see
  `evaluate_direction`).
- **strategy effect** (`strategy_effect`): the simulator through the real parser, book kernel, model
  and the built-in market maker on the strategy engine (procs/sandbox.py: paper exchange, risk, kill
  switch) in one process, once with the anomaly flags and once with them cleared, counting the quotes
  placed inside labelled windows and outside.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from procs import metrics_ml as mm
from procs.datasets import ANOMALY_KINDS, SIM_START_MS, Dataset, from_capture, from_simulator
from procs.model import Model, resolve_model_path
from shm.features import FEATURE_INDEX

#: Rows scored per ONNX Runtime call.
SCORE_CHUNK = 1 << 16
#: Grace after a window's end within which an alert episode still counts as overlapping it (the 10 s
#: features remember an anomaly for about that long), for the second, lenient episode precision.
EPISODE_GRACE_MS = 10_000
#: Sidecar keys looked up, in order, for the share of "up" rows in the direction model's training data.
TRAIN_UP_KEYS: tuple[tuple[str, ...], ...] = (("train_up_fraction",), ("trained_on", "up_fraction"),
                                              ("trained_on", "train_up_fraction"), ("metrics", "train_up_fraction"))
DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- models and rows -------------------------------------------------------------------------------

def load_model(path: str | Path) -> tuple[Model, dict[str, Any]]:
    """The model (its kind from the sidecar, anomaly when it has none) and the raw sidecar dict."""
    p = resolve_model_path(path)
    model = Model.load(p)
    raw = json.loads(p.with_suffix(".json").read_text())
    return model, raw


def lookup(raw: dict[str, Any], keys: Sequence[str]) -> Any:
    """raw[keys[0]][keys[1]]..., or None when a key is missing."""
    v: Any = raw
    for k in keys:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v


def sidecar_horizon_ms(raw: dict[str, Any], path: str | Path = "<sidecar>") -> int:
    """The direction label horizon the model was trained for: "horizon_ms" (top level, else in
    "trained_on"), 0 when absent (the next change of the mid)."""
    v = raw.get("horizon_ms", lookup(raw, ("trained_on", "horizon_ms")))
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or int(v) != v:
        raise ValueError(f"{path}: sidecar field 'horizon_ms': expected an integer >= 0, found {v!r}")
    return int(v)


def sidecar_train_up_fraction(raw: dict[str, Any]) -> tuple[float | None, str | None]:
    """(share of up labels in the training data, the sidecar key it came from), or (None, None)."""
    for keys in TRAIN_UP_KEYS:
        v = lookup(raw, keys)
        if isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1:
            return float(v), ".".join(keys)
    return None, None


def training_overlap(raw: dict[str, Any], *, captures: Sequence[str | Path] = (), sim_seeds: Sequence[int] = (),
                     restricted: bool = False) -> list[str]:
    """Warnings when the rows to evaluate include the model's own training data, per its sidecar."""
    tr = raw.get("trained_on") if isinstance(raw.get("trained_on"), dict) else {}
    out = []
    seeds = sorted({int(s) for s in tr.get("train_seeds", []) if isinstance(s, int)} & set(sim_seeds))
    if seeds:
        out.append(f"simulator seeds {seeds} are among the model's training seeds (sidecar trained_on.train_seeds): "
                   "these rows are not held out")
    name = tr.get("capture")
    if name and not restricted and any(Path(c).name == name for c in captures):
        start = sidecar_test_start_ms(raw)
        hint = f" --from-ms {start}" if start is not None else " --tail F"
        out.append(f"{name} is the model's training capture (sidecar trained_on.capture) and all of it is "
                   f"evaluated, training rows included; for its held-out tail pass{hint}")
    return out


def read_labels(path: str | Path) -> list[dict[str, Any]]:
    """Anomaly windows from a labels file (JSON lines, as the simulator and run.py write them)."""
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        w = json.loads(line)
        for k in ("kind", "symbol", "start_E_ms", "end_E_ms"):
            if k not in w:
                raise ValueError(f"{path}:{i}: label field '{k}': expected present, found missing")
        if w["kind"] not in ANOMALY_KINDS:
            raise ValueError(f"{path}:{i}: label field 'kind': expected one of {list(ANOMALY_KINDS)}, "
                             f"found {w['kind']!r}")
        out.append(w)
    return out


def label_rows(ds: Dataset, windows: list[dict[str, Any]]) -> Dataset:
    """`ds` with `anomaly` set from `windows` (as procs.datasets.from_simulator does) and marked labelled."""
    ds.anomaly = np.zeros(len(ds), np.int64)
    upper = [s.upper() for s in ds.symbols]
    for w in windows:
        name = str(w["symbol"]).upper()
        if name not in upper:
            continue
        inside = (ds.symbol == upper.index(name)) & (ds.e_ms >= w["start_E_ms"]) & (ds.e_ms <= w["end_E_ms"])
        ds.anomaly[inside] = ANOMALY_KINDS.index(w["kind"]) + 1
    ds.windows = [dict(w) for w in windows]
    ds.meta["labelled"] = True
    return ds


def load_rows(*, captures: Sequence[str | Path] = (), labels: Sequence[str | Path] = (),
              sim_seeds: Sequence[int] = (), seconds: float = 600.0, symbols: Sequence[str] = DEFAULT_SYMBOLS,
              anomalies_per_min: float = 2.0, warmup_s: float | None = None,
              progress: bool = True) -> list[Dataset]:
    """One Dataset per capture (`labels[i]`, if given, labels capture i) or per simulator seed. Simulator
    rows and labelled captures carry meta["labelled"] = True."""
    from procs.sources.replay import capture_format

    if bool(captures) == bool(sim_seeds):
        raise ValueError("rows: expected captures or simulator seeds (one of the two), found "
                         f"{len(captures)} captures and {len(sim_seeds)} seeds")
    if labels and len(labels) != len(captures):
        raise ValueError(f"labels: expected one labels file per capture ({len(captures)}), found {len(labels)}")
    out: list[Dataset] = []
    for i, path in enumerate(captures):
        if not Path(path).is_file():
            raise FileNotFoundError(f"capture not found: path={path}")
        if capture_format(path) == "binary":
            raise ValueError(f"{path}: format: expected a <ts_ns> <json> lines capture, found a binary capture "
                             "(evaluate the JSON capture it was converted from)")
        if progress:
            log(f"evaluate: rows of {path} ...")
        ds = from_capture(path, warmup_s=5.0 if warmup_s is None else warmup_s, progress=progress)
        ds.meta["labelled"] = False
        if labels:
            label_rows(ds, read_labels(labels[i]))
        out.append(ds)
    for seed in sim_seeds:
        if progress:
            log(f"evaluate: simulator seed {seed}, {seconds:g} s of {','.join(symbols)} ...")
        t = time.perf_counter()
        ds = from_simulator(seed, seconds, list(symbols), anomalies_per_min=anomalies_per_min,
                            warmup_s=10.0 if warmup_s is None else warmup_s, progress=progress)
        ds.meta["labelled"] = True
        if progress:
            log(f"  seed {seed}: {len(ds)} rows, {len(ds.windows)} windows, {time.perf_counter() - t:.1f} s")
        out.append(ds)
    return out


def tail_mask(ds: Dataset, fraction: float | None = None, from_ms: int | None = None) -> np.ndarray:
    """Rows in the last `fraction` of the dataset's exchange-time span (E >= E_min + (1 - fraction) *
    (E_max - E_min), the split scripts/train_direction.py makes), and with E >= from_ms; all rows for None."""
    m = np.ones(len(ds), bool)
    if len(ds) == 0:
        return m
    if fraction is not None and fraction < 1.0:
        if not 0 < fraction < 1:
            raise ValueError(f"tail: expected a fraction in (0, 1], found {fraction}")
        t0, t1 = int(ds.e_ms.min()), int(ds.e_ms.max())
        m &= ds.e_ms >= t0 + round((1 - fraction) * (t1 - t0))
    if from_ms is not None:
        m &= ds.e_ms >= from_ms
    return m


def sidecar_test_start_ms(raw: dict[str, Any]) -> int | None:
    """Where the direction model's test tail starts (exchange time ms), if its sidecar records the split."""
    v = lookup(raw, ("metrics", "split", "test_start_ms"))
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


def score_rows(model: Model, x: np.ndarray) -> np.ndarray:
    """The model's output columns for raw feature rows (n, 16), in chunks."""
    parts = [model.score(x[i:i + SCORE_CHUNK]) for i in range(0, len(x), SCORE_CHUNK)]
    return np.concatenate(parts) if parts else np.zeros((0, model.n_outputs), np.float32)


@dataclass
class Evaluation:
    """Metrics (JSON-able dict) plus the per-row arrays behind them (for curves and histograms)."""

    metrics: dict[str, Any]
    score: np.ndarray  # column 0 of the evaluated rows
    label: np.ndarray  # anomaly: 0 none / 1 + kind index; direction: 1 up / 0 down
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def _source(datasets: Sequence[Dataset]) -> str:
    return " + ".join(d.source for d in datasets)


def _combined(datasets: Sequence[Dataset], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Rows of several datasets as one: symbol ids made distinct per dataset, windows renamed to match."""
    names: list[str] = []
    windows: list[dict[str, Any]] = []
    syms, es = [], []
    for i, (d, m) in enumerate(zip(datasets, masks, strict=True)):
        syms.append(d.symbol[m] + len(names))
        es.append(d.e_ms[m])
        windows += [{**w, "symbol": f"{i}:{str(w['symbol']).upper()}"} for w in d.windows]
        names += [f"{i}:{s.upper()}" for s in d.symbols]
    return np.concatenate(syms), np.concatenate(es), names, windows  # type: ignore[return-value]


# -- anomaly ------------------------------------------------------------------------------------------

def evaluate_anomaly(model: Model, datasets: Sequence[Dataset], *, tail: float | None = None,
                     from_ms: int | None = None, model_name: str | None = None) -> Evaluation:
    """Metrics of an anomaly model (see the module doc). Rows alert when the alert value (column 0, or its
    per-symbol EW time mean with a sidecar history: Model.alert_level) > threshold."""
    labelled = all(d.meta.get("labelled") for d in datasets)
    masks = [tail_mask(d, tail, from_ms) for d in datasets]
    # what the stage alerts on: column 0, or its per-symbol EW time mean when the sidecar has a history
    score = np.concatenate([model.alert_level(score_rows(model, d.x[m])[:, 0], d.e_ms[m], d.symbol[m])
                            for d, m in zip(datasets, masks, strict=True)])
    lab = np.concatenate([d.anomaly[m] for d, m in zip(datasets, masks, strict=True)])
    alert = score > model.threshold
    base: dict[str, Any] = {
        "model": model_name or str(model.path), "kind": "anomaly", "version": model.version,
        "score_kind": model.score_kind, "history_tau_ms": model.history_tau_ms or None,
        "source": _source(datasets), "tail": tail, "from_ms": from_ms,
        "labels": labelled,
        "n": len(score), "threshold": model.threshold, "alerts": int(alert.sum()),
        "alert_rate": float(alert.mean()) if len(alert) else float("nan"),
    }
    if not labelled:
        counts, edges = np.histogram(score, bins=20)
        base.update({
            "precision": None, "recall": None, "roc_auc": None,
            "note": "no anomaly labels exist for a capture: only the alert rate and the score distribution "
                    "(pass --labels FILE for a simulator capture, or --sim-seeds)",
            "score_quantiles": mm.quantiles(score),
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        })
        return Evaluation(mm.to_jsonable(base), score, lab)
    truth = lab > 0
    prf = mm.precision_recall_f1(alert, truth)
    base.update({
        "positives": int(truth.sum()),
        "precision": prf["precision"], "recall": prf["recall"], "f1": prf["f1"],
        "roc_auc": mm.roc_auc(score, truth), "average_precision": mm.average_precision(score, truth),
        "confusion": {k: prf[k] for k in ("tp", "fp", "fn", "tn")},
    })
    per: dict[str, Any] = {}
    for i, kind in enumerate(ANOMALY_KINDS):
        sub = (lab == 0) | (lab == i + 1)  # this kind against the normal rows; the other kinds left out
        t = lab[sub] == i + 1
        k = mm.precision_recall_f1(alert[sub], t)
        nan = float("nan")
        # a kind with no rows here has nothing to be precise about: n/a rather than a precision of 0
        per[kind] = {"positives": int(t.sum()), "precision": k["precision"] if t.any() else nan,
                     "recall": k["recall"], "f1": k["f1"] if t.any() else nan, "roc_auc": mm.roc_auc(score[sub], t)}
    base["per_kind"] = per
    sym, e, names, windows = _combined(datasets, masks)
    base["windows"] = mm.window_recall(alert, sym, e, windows, names, ANOMALY_KINDS)
    base["episodes"] = mm.alert_episodes(alert, sym, e, windows, names, ANOMALY_KINDS)
    base["episodes_with_grace"] = mm.alert_episodes(alert, sym, e, windows, names, ANOMALY_KINDS,
                                                    grace_ms=EPISODE_GRACE_MS)
    base["score_quantiles"] = {"normal": mm.quantiles(score[~truth]), "anomalous": mm.quantiles(score[truth])}
    return Evaluation(mm.to_jsonable(base), score, lab)


# -- direction ----------------------------------------------------------------------------------------

def evaluate_direction(model: Model, datasets: Sequence[Dataset], *, horizon_ms: int = 0,
                       tail: float | None = None, from_ms: int | None = None, train_up_fraction: float | None = None,
                       train_up_key: str | None = None, model_name: str | None = None) -> Evaluation:
    """Metrics of a direction model. Prediction: up iff P(up) (column 0) > threshold (0.5 by default).

    Baselines (hit rates on the same rows):
    - `majority`: the majority class *of the evaluated rows*. An oracle: it knows the test set's base
      rate, so it is the best any constant prediction can do there; a model must beat it to be useful.
    - `always_up`: predicts up everywhere (its hit rate is the share of up rows).
    - `training_majority`: the majority class of the training data, from the sidecar (`TRAIN_UP_KEYS`);
      None when the sidecar does not record it. This one is an honest (non-oracle) constant baseline.
    - `imbalance`: up iff imbalance_1 > 0 (more quantity on the best bid than on the best ask).
    """
    masks = []
    ys = []
    events = []
    n_events = 0
    skipped = 0
    rows = 0
    for d in datasets:
        y = d.direction(horizon_ms)  # on the whole dataset: a row near the tail's start may look past it
        m = tail_mask(d, tail, from_ms)
        rows += int(m.sum())
        skipped += int(np.count_nonzero(m & (y < 0)))
        masks.append(m & (y >= 0))
        ys.append(y[m & (y >= 0)])
        _, ev = np.unique(label_events(d)[m & (y >= 0)], return_inverse=True)
        events.append(ev + n_events)  # numbered on from the previous dataset's
        n_events += int(ev.max()) + 1 if len(ev) else 0
    y = np.concatenate(ys).astype(bool)
    ev_id = np.concatenate(events) if events else np.zeros(0, np.int64)
    out = np.concatenate([score_rows(model, d.x[m]) for d, m in zip(datasets, masks, strict=True)])
    p = out[:, 0].astype(np.float64)
    if len(p) and (p.min() < 0 or p.max() > 1 or np.isnan(p).any()):
        raise ValueError(f"{model.path}: output column 0 ({model.outputs[0]!r}): expected P(up) in [0, 1], "
                         f"found range [{np.nanmin(p):.4g}, {np.nanmax(p):.4g}]")
    imb = np.concatenate([d.x[m, FEATURE_INDEX["imbalance_1"]] for d, m in zip(datasets, masks, strict=True)])
    n = len(y)
    up_frac = float(y.mean()) if n else float("nan")
    hit = mm.hit_rate(p > model.threshold, y)
    # rows of one label event share their label: the Wilson interval (rows independent) is optimistic
    ev_ci = mm.cluster_bootstrap_ci((p > model.threshold) == y, ev_id)

    def const(pred_up: bool, p_const: float | None) -> dict[str, Any]:
        h = mm.hit_rate(np.full(n, pred_up), y)
        d: dict[str, Any] = {"predicts": "up" if pred_up else "down", "hit_rate": h["hit_rate"],
                             "ci95": [h["ci_low"], h["ci_high"]]}
        if p_const is not None:
            d["log_loss"] = mm.log_loss(np.full(n, p_const), y)  # the constant probability's log loss
        return d

    detail: dict[str, Any] = {
        "majority": {"definition": "majority class of the evaluated rows (an oracle: it knows the test base "
                                   "rate); log loss of the constant P(up) = the test share of up rows",
                     **const(up_frac >= 0.5, up_frac)},
        "always_up": {"definition": "predicts up on every row", **const(True, None)},
    }
    if train_up_fraction is not None:
        detail["training_majority"] = {
            "definition": f"majority class of the training data (sidecar {train_up_key} = "
                          f"{train_up_fraction:.4f}); log loss of the constant P(up) = that share",
            "up_fraction": train_up_fraction, **const(train_up_fraction >= 0.5, train_up_fraction)}
    else:
        detail["training_majority"] = {"definition": "majority class of the training data: not recorded in "
                                                     f"the sidecar (looked for {['.'.join(k) for k in TRAIN_UP_KEYS]})",
                                       "hit_rate": None}
    h_imb = mm.hit_rate(imb > 0, y)
    detail["imbalance"] = {"definition": "up iff imbalance_1 > 0 (more quantity on the best bid than on the best "
                                         "ask); roc_auc of imbalance_1 as the score",
                           "hit_rate": h_imb["hit_rate"], "ci95": [h_imb["ci_low"], h_imb["ci_high"]],
                           "roc_auc": mm.roc_auc(imb, y) if n else float("nan")}
    metrics: dict[str, Any] = {
        "model": model_name or str(model.path), "kind": "direction", "version": model.version,
        "source": _source(datasets), "tail": tail, "from_ms": from_ms, "horizon_ms": horizon_ms,
        "threshold": model.threshold,
        "n": n, "rows": rows, "skipped_no_move": skipped, "up_fraction": up_frac,
        "hit_rate": hit["hit_rate"], "hit_rate_ci95": [hit["ci_low"], hit["ci_high"]],
        "label_events": len(np.unique(ev_id)), "hit_rate_ci95_event_bootstrap": list(ev_ci),
        "log_loss": mm.log_loss(p, y) if n else float("nan"),
        "roc_auc": mm.roc_auc(p, y) if n else float("nan"),
        "baselines": {"majority": detail["majority"]["hit_rate"], "imbalance": detail["imbalance"]["hit_rate"],
                      "always_up": detail["always_up"]["hit_rate"],
                      "training_majority": detail["training_majority"]["hit_rate"]},
        "baseline_detail": detail,
    }
    return Evaluation(mm.to_jsonable(metrics), p, y.astype(np.int64), {"imbalance_1": imb})


def label_events(ds: Dataset) -> np.ndarray:
    """Per row, an id of its run of constant mid on its symbol (rows of one run share the next move: one
    label event)."""
    ids = np.zeros(len(ds), np.int64)
    mid = ds.mid
    for s in np.unique(ds.symbol):
        idx = np.flatnonzero(ds.symbol == s)
        run = np.cumsum(np.r_[True, mid[idx][1:] != mid[idx][:-1]])  # 1, 1, 2, ...: +1 at each mid change
        ids[idx] = run + int(s) * (len(ds) + 1)  # apart from every other symbol's ids
    return ids


def evaluate(model: Model, raw: dict[str, Any], datasets: Sequence[Dataset], *, tail: float | None = None,
             from_ms: int | None = None, horizon_ms: int | None = None, model_name: str | None = None) -> Evaluation:
    """The evaluation the model's kind calls for (rows restricted by `tail_mask(tail, from_ms)`)."""
    if model.kind == "direction":
        h = sidecar_horizon_ms(raw, model.path.with_suffix(".json")) if horizon_ms is None else horizon_ms
        frac, key = sidecar_train_up_fraction(raw)
        return evaluate_direction(model, datasets, horizon_ms=h, tail=tail, from_ms=from_ms, train_up_fraction=frac,
                                  train_up_key=key, model_name=model_name)
    return evaluate_anomaly(model, datasets, tail=tail, from_ms=from_ms, model_name=model_name)


# -- printing -----------------------------------------------------------------------------------------

def fmt(v: Any, digits: int = 4) -> str:
    """A metric for a table: None / NaN as 'n/a'."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_metrics(m: dict[str, Any]) -> str:
    """Markdown tables of an evaluation's metrics (what evaluate.py prints and the report shows)."""
    head = (f"model `{m['model']}` ({m['kind']}, version {m['version']}), source: {m['source']}"
            + (f", last {m['tail']:.0%} of the exchange time" if m.get("tail") else "")
            + (f", rows with E >= {m['from_ms']}" if m.get("from_ms") is not None else ""))
    if m["kind"] == "direction":
        b = m["baseline_detail"]
        lo, hi = m["hit_rate_ci95"]
        eb = m["hit_rate_ci95_event_bootstrap"]
        lines = [head, "",
                 f"n = {m['n']} rows with a move (of {m['rows']}; {m['skipped_no_move']} skipped: the mid does not "
                 f"move within the horizon / has no future), horizon {m['horizon_ms']} ms"
                 f"{' (the next change of the mid)' if m['horizon_ms'] == 0 else ''}, up share {fmt(m['up_fraction'])}",
                 "", f"The rows fall in {m['label_events']} label events (runs of constant mid): the rows of one event "
                 "share its label, so the Wilson interval, which takes rows as independent, is optimistic; the event "
                 "bootstrap resamples whole events.",
                 "", "| predictor | hit rate | 95 % CI (Wilson, rows) | log loss | ROC-AUC |", "|---|---|---|---|---|",
                 f"| model (up iff P(up) > {m['threshold']:g}) | {fmt(m['hit_rate'])} | {fmt(lo)}–{fmt(hi)} (event "
                 f"bootstrap {fmt(eb[0])}–{fmt(eb[1])}) | {fmt(m['log_loss'])} | {fmt(m['roc_auc'])} |"]
        for name in ("majority", "training_majority", "always_up", "imbalance"):
            d = b[name]
            ci = d.get("ci95")
            lines.append(f"| {name} | {fmt(d.get('hit_rate'))} | {fmt(ci[0]) + '–' + fmt(ci[1]) if ci else 'n/a'} | "
                         f"{fmt(d.get('log_loss'))} | {fmt(d.get('roc_auc'))} |")
        lines += ["", *(f"- {name}: {b[name]['definition']}" for name in b)]
        return "\n".join(lines)
    if not m["labels"]:
        q = m["score_quantiles"]
        return "\n".join([
            head, "", f"NO LABELS: {m['note']}.", "",
            f"n = {m['n']} rows, alert rate {fmt(m['alert_rate'])} ({m['alerts']} rows with column 0 > "
            f"{m['threshold']:.4g})", "",
            "| " + " | ".join(q) + " |", "|" + "---|" * len(q), "| " + " | ".join(fmt(v) for v in q.values()) + " |"])
    lines = [head, "",
             f"n = {m['n']} rows, {m['positives']} in labelled windows; threshold {m['threshold']:.4g}; alert rate "
             f"{fmt(m['alert_rate'])}", "",
             "Rows (a row is positive when it lies in a labelled window; per kind: that kind's rows against the "
             "normal rows):", "",
             "| rows | positives | precision | recall | F1 | ROC-AUC |", "|---|---|---|---|---|---|",
             f"| **all** | {m['positives']} | {fmt(m['precision'])} | {fmt(m['recall'])} | {fmt(m['f1'])} | "
             f"{fmt(m['roc_auc'])} |"]
    for kind, d in m["per_kind"].items():
        lines.append(f"| {kind} | {d['positives']} | {fmt(d['precision'])} | {fmt(d['recall'])} | {fmt(d['f1'])} | "
                     f"{fmt(d['roc_auc'])} |")
    ep, eg = m["episodes"], m["episodes_with_grace"]
    lines += ["", "Windows (caught: at least one alerting row inside) and alert episodes (alerts of a symbol at most "
                  f"{ep.get('gap_ms', mm.EPISODE_GAP_MS)} ms apart: one strategy pause) that overlap a window:", "",
              "| kind | windows | caught | window recall | median delay ms | episodes overlapping |",
              "|---|---|---|---|---|---|"]
    for kind, d in m["windows"].items():
        over = ep["overlapping"] if kind == "all" else ep["per_kind"].get(kind, 0)
        name = "**all**" if kind == "all" else kind
        lines.append(f"| {name} | {d['windows']} | {d['caught']} | {fmt(d['recall'])} | "
                     f"{fmt(d['median_delay_ms'], 0)} | {over} |")
    lines += ["", f"Alert episodes: {ep['episodes']}, of which {ep['overlapping']} overlap a labelled window "
                  f"(episode precision {fmt(ep['precision'])}); counting {eg['grace_ms'] // 1000} s after a window's "
                  f"end as part of it: {eg['overlapping']} ({fmt(eg['precision'])})."]
    return "\n".join(lines)


# -- the strategy with and without the anomaly flag -----------------------------------------------------

def _mm_config(strategy: Any, kill_switch: bool) -> tuple[Any, Any]:
    """(MarketMaker, Config) for strategy_effect: run.py's defaults, `strategy` (a StrategyConfig or a dict of
    the market maker's params) over them, the kill switch on or off."""
    from procs.config import Config
    from procs.strategies.market_maker import MarketMaker

    cfg = Config()
    params = dict(getattr(strategy, "params", strategy) or {}) if strategy is not None else {}
    cfg.risk.kill_switch = kill_switch
    return MarketMaker({k: v for k, v in params.items() if k in MarketMaker.PARAMS}), cfg


def strategy_effect(model: Model, *, seed: int, seconds: float, symbols: Sequence[str] = DEFAULT_SYMBOLS,
                    anomalies_per_min: float = 2.0, warmup_s: float = 10.0, strategy: Any = None,
                    progress: Callable[[str], None] | None = log) -> dict[str, Any]:
    """Run `seconds` of the simulator through the real parser and book kernel, score every book update
    with the anomaly model (alert value > threshold sets FLAG_ANOMALY; values[SCORE_ANOMALY] is its level, as
    in procs/inference.py), and drive the market maker (procs/strategies/market_maker.py on procs/sandbox.py)
    twice from the same records: with the flags and the kill switch, and with the flags cleared (same values,
    so the same spread).

    Deterministic: one process, and each update is decided with the score of its own features (zero
    inference latency; the pipeline's inference stage scores conflated, up to inference.min_interval_us
    later, so live flags arrive a little later than here). The first `warmup_s` of each symbol are run
    but not counted (as in the datasets). Counted per kind of labelled window and outside any window:
    orders by action (new, replace, cancel), quotes placed (new + replace: a price put into the market)
    and the share of valid book updates after which a quote rests (exposure)."""
    from procs.kernels.book import BookState
    from procs.kernels.parse_json import ERR_NO_SPACE, Parser, SymbolTable
    from procs.sources.simulator import SimParams, Simulator
    from shm.records import (
        BOOK,
        FEATURES,
        FLAG_ANOMALY,
        FLAG_BOOK_VALID,
        MARKET,
        SCORE,
        SCORE_ANOMALY,
        SCORE_ANOMALY_RAW,
        SCORE_N_VALUES,
    )

    if model.kind != "anomaly":
        raise ValueError(f"{model.path}: sidecar field 'kind': expected 'anomaly' for the strategy effect, "
                         f"found {model.kind!r}")
    from procs.kernels import engine as E
    from procs.sandbox import Sandbox

    sandboxes = {}
    for name, kill in (("flags", True), ("no_flags", False)):
        mm_strategy, mm_cfg = _mm_config(strategy, kill)
        sandboxes[name] = Sandbox(mm_strategy, list(symbols), mm_cfg)
    mm_params = sandboxes["flags"].strategy.params
    risk = _mm_config(strategy, True)[1].risk
    sim = Simulator(SimParams(symbols=list(symbols), seed=seed, anomalies_per_min=anomalies_per_min,
                              depth_interval_ms=100, rate_scale=1.0, start_ms=SIM_START_MS))
    table = SymbolTable(list(symbols))
    parser = Parser(table)
    book = BookState(len(symbols))
    book.warm_up()
    batch = 1 << 14
    recs = np.zeros(batch, MARKET.dtype)
    ob = np.zeros(batch, BOOK.dtype)
    of = np.zeros(batch, FEATURES.dtype)
    runs = sandboxes
    rows_sym, rows_e, rows_valid, rows_alert = [], [], [], []
    ew_state = np.zeros((len(symbols), 4))
    quoted = {name: [] for name in runs}
    orders: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in runs}
    row_base = 0

    def flush(n: int) -> None:
        nonlocal row_base
        k = book.process(recs, n, ob, of)
        b = ob[:k]
        valid = (b["flags"] & FLAG_BOOK_VALID) != 0
        sc = np.zeros(k, SCORE.dtype)
        if valid.any():
            raw = score_rows(model, of["values"][:k][valid])[:, 0].astype(np.float64)
            # the stage's alert value: column 0, or its EW time mean per symbol (state carried across batches)
            hist = model.alert_level(raw, b["exch_ts_ms"][valid], b["symbol"][valid], ew_state)
            sc["values"][valid, SCORE_ANOMALY] = model.level(hist)  # the level decide widens the spread by
            sc["values"][valid, SCORE_ANOMALY_RAW] = raw
            sc["flags"][valid] = np.where(hist > model.threshold, FLAG_ANOMALY, 0)
        rows_sym.append(b["symbol"].astype(np.int64))
        rows_e.append(b["exch_ts_ms"].copy())
        rows_valid.append(valid)
        rows_alert.append((sc["flags"] & FLAG_ANOMALY) != 0)
        off = sc.copy()
        off["flags"] = 0  # same scores, no flag: the kill switch never acts
        sc["n_outputs"][valid] = SCORE_N_VALUES  # rows without a score (invalid books) leave the board as it was
        off["n_outputs"] = sc["n_outputs"]
        for name, s in (("flags", sc), ("no_flags", off)):
            sb = runs[name]
            q = sb.feed(b, s)
            quoted[name].append(q)
            sent, rows, _ = sb.take()
            orders[name].append((rows, sent["action"].astype(np.int64)))
        row_base += k

    t0 = None
    n = 0
    end_ns = int(seconds * 1e9)
    wall = time.perf_counter()
    next_report = wall + 5.0
    for ts, raw_msg in sim.messages():
        if t0 is None:
            t0 = ts
        if ts - t0 >= end_ns:
            break
        k = parser.parse(raw_msg, ts, recs, n)
        if k == ERR_NO_SPACE:
            flush(n)
            n = 0
            k = parser.parse(raw_msg, ts, recs, 0)
        n += max(k, 0)
        if progress and time.perf_counter() >= next_report:
            next_report += 5.0
            progress(f"  strategy effect seed {seed}: {(ts - t0) / 1e9:.0f}/{seconds:g} s simulated, "
                     f"{time.perf_counter() - wall:.0f} s")
    if n:
        flush(n)
    sym = np.concatenate(rows_sym)
    e = np.concatenate(rows_e)
    valid = np.concatenate(rows_valid)
    alert = np.concatenate(rows_alert)
    kind = np.zeros(len(sym), np.int64)  # 0 outside any window, else 1 + index into ANOMALY_KINDS
    for w in sim.labels:
        sid = table.lookup(w["symbol"])
        kind[(sym == sid) & (e >= w["start_E_ms"]) & (e <= w["end_E_ms"])] = ANOMALY_KINDS.index(w["kind"]) + 1
    counted = np.zeros(len(sym), bool)
    for sid in range(len(symbols)):
        m = (sym == sid) & valid
        if m.any():
            counted |= (sym == sid) & (e >= e[m].min() + warmup_s * 1000)
    groups = {"outside": 0, **{k: i + 1 for i, k in enumerate(ANOMALY_KINDS)}}
    res: dict[str, Any] = {"seed": seed, "seconds": seconds, "symbols": list(symbols),
                           "anomalies_per_min": anomalies_per_min, "warmup_s": warmup_s,
                           "threshold": model.threshold, "strategy": {
                               "spread_bps": mm_params["spread_bps"], "requote_bps": mm_params["requote_bps"],
                               "pause_hold_ms": risk.kill_hold_ms}, "windows": len(sim.labels), "groups": {}}
    per_run = {}
    for name in runs:
        row = np.concatenate([o[0] for o in orders[name]]) if orders[name] else np.zeros(0, np.int64)
        act = np.concatenate([o[1] for o in orders[name]]) if orders[name] else np.zeros(0, np.int64)
        ok = counted[row]
        per_run[name] = (row[ok], act[ok], np.concatenate(quoted[name]))
    for gname, gk in groups.items():
        rows_in = counted & valid & (kind == gk)
        d: dict[str, Any] = {"updates": int(rows_in.sum()),
                             "alert_share": float(alert[rows_in].mean()) if rows_in.any() else float("nan"),
                             "windows": sum(1 for w in sim.labels if w["kind"] == gname) if gk else None}
        for name, (row, act, q) in per_run.items():
            in_g = kind[row] == gk
            new = int(np.count_nonzero(in_g & (act == E.ACTION_NEW)))
            rep = int(np.count_nonzero(in_g & (act == E.ACTION_REPLACE)))
            d[name] = {"new": new, "replace": rep, "cancel": int(np.count_nonzero(in_g & (act == E.ACTION_CANCEL))),
                       "placed": new + rep,
                       "exposure": float(q[rows_in].mean()) if rows_in.any() else float("nan")}
        off_placed = d["no_flags"]["placed"]
        d["suppression"] = 1.0 - d["flags"]["placed"] / off_placed if off_placed else float("nan")
        off_exp = d["no_flags"]["exposure"]
        d["exposure_suppression"] = (1.0 - d["flags"]["exposure"] / off_exp
                                     if np.isfinite(off_exp) and off_exp > 0 else float("nan"))
        res["groups"][gname] = d
    inside = [res["groups"][k] for k in ANOMALY_KINDS]
    on = sum(g["flags"]["placed"] for g in inside)
    off = sum(g["no_flags"]["placed"] for g in inside)
    res["inside_all"] = {"flags_placed": on, "no_flags_placed": off,
                         "suppression": 1.0 - on / off if off else float("nan")}
    res["wall_s"] = time.perf_counter() - wall
    return mm.to_jsonable(res)


def format_strategy_effect(r: dict[str, Any]) -> str:
    """A markdown table of `strategy_effect`'s result."""
    s = r["strategy"]
    lines = [f"Simulator seed {r['seed']}, {r['seconds']:g} s of {', '.join(r['symbols'])}, {r['windows']} labelled "
             f"windows; strategy spread {s['spread_bps']:g} bps, requote {s['requote_bps']:g} bps, pause hold "
             f"{s['pause_hold_ms']:g} ms; model threshold {r['threshold']:.4g}. Quotes placed = new + replace "
             "orders (a price put into the market); exposure = share of valid book updates after which a quote "
             "rests. First "
             f"{r['warmup_s']:g} s per symbol not counted.", "",
             "| where | book updates | alert share | placed, flags on | placed, flags off | suppression | "
             "cancels, on / off | exposure on / off |",
             "|---|---|---|---|---|---|---|---|"]
    for name, d in r["groups"].items():
        on, off = d["flags"], d["no_flags"]
        label = "outside windows" if name == "outside" else f"in {name} windows ({d['windows']})"
        lines.append(f"| {label} | {d['updates']} | {fmt(d['alert_share'], 3)} | {on['placed']} (new {on['new']}) | "
                     f"{off['placed']} (new {off['new']}) | {fmt(d['suppression'], 3)} | {on['cancel']} / "
                     f"{off['cancel']} | {fmt(on['exposure'], 3)} / {fmt(off['exposure'], 3)} |")
    a = r["inside_all"]
    lines += ["", f"Inside all labelled windows: {a['flags_placed']} quotes placed with the flag, "
                  f"{a['no_flags_placed']} without: suppression ratio {fmt(a['suppression'], 3)} "
                  "(1 − placed with / placed without)."]
    return "\n".join(lines)
