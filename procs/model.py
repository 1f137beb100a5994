"""Runtime side of the anomaly model: an ONNX graph plus a JSON sidecar, scored with ONNX Runtime.

No torch here (the runtime installs only onnxruntime). The sidecar (`<model>.json` next to
`<model>.onnx`) says which features the graph reads and in what order, how to standardise them, what
each output column means and where the alert threshold is; `models/README.md` documents the format so
users can plug in their own model.

Normalisation happens here, not in the graph: `score` picks the sidecar's features out of the raw
16-value vector (FEATURE_NAMES order), computes (x - mean) / std in float64 and hands float32 to the
graph. Column 0 of the output must be P(anomaly): procs/inference.py compares it to `threshold`.

Scoring a batch of 1-8 rows costs a few µs: per batch size the input/output buffers and the ONNX
Runtime IO binding are made once and reused, so a call allocates only its returned copy.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from shm.features import FEATURE_INDEX, FEATURE_NAMES

#: Sidecar fields every model must have, with what is expected of each (used in error messages).
REQUIRED_FIELDS: dict[str, str] = {
    "features": "non-empty list of distinct feature names from shm.features.FEATURE_NAMES",
    "mean": "list of finite numbers, one per feature",
    "std": "list of finite numbers > 0, one per feature",
    "outputs": "non-empty list of distinct output names, column 0 = P(anomaly)",
    "threshold": "finite number in [0, 1]",
    "version": "non-empty string",
    "trained_on": "object (seeds, seconds, symbols)",
    "metrics": "object (held-out precision / recall)",
}

#: Batch sizes with a cached IO binding; larger batches still work, with a binding made per call.
MAX_CACHED_BATCH = 64


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


def parse_sidecar(meta: Any, path: str | Path = "<sidecar>") -> dict[str, Any]:
    """Validate a decoded sidecar; returns the checked fields (numpy mean/std, feature_index).

    Every problem raises ValueError naming the field, what was expected and what was found.
    """
    path = Path(path)
    if not isinstance(meta, dict):
        raise _bad(path, "<top level>", "JSON object", type(meta).__name__)
    for name, expected in REQUIRED_FIELDS.items():
        if name not in meta:
            raise _bad(path, name, expected, "missing")
    features = _names(path, meta, "features")
    unknown = [f for f in features if f not in FEATURE_INDEX]
    if unknown:
        raise _bad(path, "features", f"names from {list(FEATURE_NAMES)}", f"unknown {unknown}")
    n = len(features)
    mean = _numbers(path, meta, "mean", n, positive=False)
    std = _numbers(path, meta, "std", n, positive=True)
    outputs = _names(path, meta, "outputs")
    thr = meta["threshold"]
    if isinstance(thr, bool) or not isinstance(thr, int | float) or not math.isfinite(thr) or not 0 <= thr <= 1:
        raise _bad(path, "threshold", REQUIRED_FIELDS["threshold"], thr)
    version = meta["version"]
    if not isinstance(version, str) or not version:
        raise _bad(path, "version", REQUIRED_FIELDS["version"], version)
    for name in ("trained_on", "metrics"):
        if not isinstance(meta[name], dict):
            raise _bad(path, name, REQUIRED_FIELDS[name], type(meta[name]).__name__)
    return {"features": features, "feature_index": [FEATURE_INDEX[f] for f in features], "mean": mean,
            "std": std, "outputs": outputs, "threshold": float(thr), "version": version,
            "trained_on": meta["trained_on"], "metrics": meta["metrics"]}


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


class _Slot:
    """Buffers and IO binding for one batch size (reused by every call with that size)."""

    __slots__ = ("binding", "out", "x32", "x64")

    def __init__(self, sess: ort.InferenceSession, in_name: str, out_name: str, n: int, k_in: int, k_out: int):
        self.x64 = np.zeros((n, k_in), np.float64)
        self.x32 = np.zeros((n, k_in), np.float32)
        self.out = np.zeros((n, k_out), np.float32)
        self.binding = sess.io_binding()
        self.binding.bind_cpu_input(in_name, self.x32)
        self.binding.bind_output(out_name, "cpu", 0, np.float32, self.out.shape, self.out.ctypes.data)


class Model:
    """An ONNX model plus its sidecar; `score` maps raw feature rows to output probabilities."""

    def __init__(self, path: Path, session: ort.InferenceSession, meta: dict[str, Any], model_id: int) -> None:
        self.path = path
        self.session = session
        self.features: list[str] = meta["features"]
        self.feature_index: list[int] = meta["feature_index"]
        self.mean: np.ndarray = meta["mean"]
        self.std: np.ndarray = meta["std"]
        self.inv_std: np.ndarray = 1.0 / self.std
        self.outputs: list[str] = meta["outputs"]
        self.n_outputs: int = len(self.outputs)
        self.threshold: float = meta["threshold"]
        self.version: str = meta["version"]
        self.trained_on: dict[str, Any] = meta["trained_on"]
        self.metrics: dict[str, Any] = meta["metrics"]
        self.model_id: int = model_id
        self._idx = np.asarray(self.feature_index, np.intp)
        # a run of adjacent features (the shipped model reads FEATURE_NAMES[1:16]) is a slice, cheaper than a gather
        k = len(self._idx)
        lo = int(self._idx[0])
        self._run = slice(lo, lo + k) if np.array_equal(self._idx, np.arange(lo, lo + k)) else None
        self._in = session.get_inputs()[0].name
        self._out = session.get_outputs()[0].name
        self._slots: dict[int, _Slot] = {}

    @classmethod
    def load(cls, path: str | Path, intra_op_threads: int = 1) -> Model:
        """Load `path` (ONNX) and `path.with_suffix('.json')` (sidecar); ValueError if they disagree."""
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
        meta = parse_sidecar(meta_raw, side)
        if not isinstance(intra_op_threads, int) or intra_op_threads < 0:
            raise ValueError(f"intra_op_threads: expected int >= 0, found {intra_op_threads!r}")
        sess = ort.InferenceSession(raw, session_options(intra_op_threads), providers=["CPUExecutionProvider"])
        ins, outs = sess.get_inputs(), sess.get_outputs()
        k_in, k_out = len(meta["features"]), len(meta["outputs"])
        if len(ins) != 1 or ins[0].type != "tensor(float)" or len(ins[0].shape) != 2:
            found = [(i.name, i.type, i.shape) for i in ins]
            raise ValueError(f"{path}: graph inputs: expected one float32 tensor [batch, {k_in}], found {found}")
        if not outs or outs[0].type != "tensor(float)" or len(outs[0].shape) != 2:
            found = [(o.name, o.type, o.shape) for o in outs]
            raise ValueError(f"{path}: graph outputs: expected float32 [batch, {k_out}] first, found {found}")
        if isinstance(ins[0].shape[1], int) and ins[0].shape[1] != k_in:
            raise _bad(side, "features", f"{ins[0].shape[1]} names (the graph's input width)", f"{k_in} names")
        if isinstance(outs[0].shape[1], int) and outs[0].shape[1] != k_out:
            raise _bad(side, "outputs", f"{outs[0].shape[1]} names (the graph's output width)", f"{k_out} names")
        # crc32 of the graph bytes: a u32 that changes whenever the model does (SCORE.model_id)
        return cls(path, sess, meta, zlib.crc32(raw) & 0xFFFFFFFF)

    def _slot(self, n: int) -> _Slot:
        s = self._slots.get(n)
        if s is None:
            s = _Slot(self.session, self._in, self._out, n, len(self._idx), self.n_outputs)
            if n <= MAX_CACHED_BATCH:
                self._slots[n] = s
        return s

    def score(self, x: np.ndarray) -> np.ndarray:
        """x (n, 16) raw features in FEATURE_NAMES order (float64, may be a strided view) -> (n, k) float32.

        Column j means `outputs[j]`; column 0 is P(anomaly), compared to `threshold` by the caller.
        """
        if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"score: x: expected shape (n, {len(FEATURE_NAMES)}), found {x.shape}")
        if x.dtype != np.float64:
            x = x.astype(np.float64)  # rare path (callers normally pass FEATURES.values, float64)
        n = x.shape[0]
        if n == 0:
            return np.zeros((0, self.n_outputs), np.float32)
        s = self._slot(n)
        if self._run is not None:
            np.subtract(x[:, self._run], self.mean, out=s.x64)
        else:
            np.take(x, self._idx, axis=1, out=s.x64)
            np.subtract(s.x64, self.mean, out=s.x64)
        np.multiply(s.x64, self.inv_std, out=s.x32, casting="same_kind")
        self.session.run_with_iobinding(s.binding)
        # a copy: the slot's buffer is overwritten by the next call of the same size
        return s.out.copy()

    def __repr__(self) -> str:
        return (f"Model({str(self.path)!r}, version={self.version!r}, model_id={self.model_id:#010x}, "
                f"features={len(self.features)}, outputs={self.outputs}, threshold={self.threshold:.4g})")
