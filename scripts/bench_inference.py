#!/usr/bin/env python3
"""Benchmark the inference stage: ONNX Runtime call styles, Model.score, torch eager, and the whole pass.

For the anomaly model (models/anomaly.onnx) and the direction model (models/direction.onnx; while that
does not exist, a STAND-IN: an MLP of the same shape with random weights, built and exported here into a
temporary folder, for timing only and never written to models/), at batch 1, 4 and 8:

- `sess.run`: `sess.run([out], {in: x32})`, a dict with a preallocated, already standardised float32 input;
- `iobinding`: OrtValues over preallocated numpy buffers (`OrtValue.ortvalue_from_numpy`, which on the CPU
  wraps the buffer), bound once with `bind_ortvalue_input` / `bind_ortvalue_output`, then
  `run_with_iobinding` per call;
- `Model.score`: the product path the stage calls: raw 16-value float64 features in (a strided view of
  FEATURES records), gather + standardise + cast, the IO-bound run, the output buffer back (copy=False);
- `Model.score+copy`: the same returning a copy (the public default);
- `torch eager`: the same ONNX graph executed op by op with torch calls (no_grad, 1 thread), when torch and
  onnx are importable and every op is mapped (the result is checked against ONNX Runtime's first).

For a model whose sidecar has a `frame` (the shipped VAE) the graph is the network only: `sess.run` and
`iobinding` feed it the frame (`Model.graph_input`, made once) and take its P and Q outputs (both bound),
while `Model.score` also runs the compiled pre kernel (lookup, per-symbol tables, asinh) and post kernel
(the score) around it, so it is the figure to compare with another model's `Model.score`.

Then batch 1 of one symbol through both models, p50 / p99 and ratios in the same run: torch eager (both
graphs op by op), plain `sess.run` of each, Model.score of each, and ModelPair.score (the two graphs
merged into one session, one call: what the stage runs when the `onnx` package is installed).

Then the stage's whole pass (`InferenceAgent.do_work` on real boards: read the changed symbols' features,
score with each model, fill and publish one SCORE per symbol, record the histograms) per number of
changed symbols, with both models and with the anomaly model only; and for one symbol after idle gaps of
IDLE_GAPS_MS before each pass, as between a run's updates: an idle CPU's caches go cold on this VM, and
the stage's `inference.pass` histogram in a run shows that cost, not the back-to-back figure.

Figures are wall-clock µs per call (p10 / median / p90), each call timed alone with perf_counter_ns
(whose own ~0.06 µs is included). On a shared 2-vCPU VM they are noisy: compare medians.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxruntime as ort

from procs.config import Config
from procs.model import Model, ModelPair, feature_layout_hash, session_options
from shm.features import FEATURE_NAMES
from shm.records import FEATURES, SCORE

ROOT = Path(__file__).resolve().parents[1]
ANOMALY = ROOT / "models" / "anomaly.onnx"
DIRECTION = ROOT / "models" / "direction.onnx"
BATCHES = (1, 4, 8)
SYMBOLS = (1, 4, 8)
#: idle gaps (ms) before each timed pass in the cold-pass table: in a run, updates come ms apart
IDLE_GAPS_MS = (1, 10)
#: Acceptance (issue 5): inference p50 for a batch of one symbol.
TARGET_US = 8.0
#: The stand-in direction model's inputs: the issue's direction features (flow, microprice, imbalance,
#: spread, returns, volatility); not contiguous in FEATURE_NAMES, so Model.score gathers.
STANDIN_FEATURES = ("spread_bps", "microprice_bps", "imbalance_1", "imbalance_5", "imbalance_20", "ofi", "ofi_1s",
                    "ret_100ms_bps", "ret_1s_bps", "ret_10s_bps", "vol_10s_bps")
STANDIN_HIDDEN = 32


def _env() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    return {"cpu_model": model, "nproc": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "onnxruntime": ort.__version__, "numpy": np.__version__,
            "loadavg_before": os.getloadavg(), "affinity": sorted(os.sched_getaffinity(0))}


def timed(fn: Callable[[], object], calls: int, warmup: int) -> dict[str, float]:
    """p10 / median / p90 in µs of `calls` single calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    clock = time.perf_counter_ns
    t = np.empty(calls, np.int64)
    for i in range(calls):
        t0 = clock()
        fn()
        t[i] = clock() - t0
    p10, p50, p90, p99 = np.percentile(t, [10, 50, 90, 99]) / 1000.0
    return {"p10_us": float(p10), "median_us": float(p50), "p90_us": float(p90), "p99_us": float(p99), "calls": calls}


# -- the stand-in direction model (timing only) ------------------------------------------------------

def _standin_torch(k: int) -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(k, STANDIN_HIDDEN), torch.nn.ReLU(),
                               torch.nn.Linear(STANDIN_HIDDEN, STANDIN_HIDDEN), torch.nn.ReLU(),
                               torch.nn.Linear(STANDIN_HIDDEN, 2), torch.nn.Softmax(dim=1)).eval()


def _standin_onnx_helper(k: int, out: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    sizes = [k, STANDIN_HIDDEN, STANDIN_HIDDEN, 2]
    nodes, inits, x = [], [], "x"
    for i in range(3):
        w = (rng.normal(size=(sizes[i + 1], sizes[i])) / np.sqrt(sizes[i])).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(sizes[i + 1], np.float32),
                                                                                f"b{i}")]
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"h{i}"], transB=1))
        x = f"h{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Softmax", [x], ["p"], axis=1))
    graph = helper.make_graph(nodes, "standin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 2])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(out))


def build_standin(folder: Path) -> tuple[Path, str]:
    """A direction-shaped MLP (11 features → 32 → 32 → 2, softmax [up, down]) with random weights, exported
    to folder/standin_direction.onnx + sidecar. Timing only: it predicts nothing."""
    k = len(STANDIN_FEATURES)
    out = folder / "standin_direction.onnx"
    try:
        import warnings

        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_standin_torch(k), (torch.zeros(2, k),), str(out), dynamo=False, input_names=["x"],
                              output_names=["p"], dynamic_axes={"x": {0: "batch"}, "p": {0: "batch"}},
                              opset_version=17)
        how = "torch.onnx.export"
    except Exception:  # no torch, or its exporter missing a piece: the same graph by hand
        _standin_onnx_helper(k, out)
        how = "onnx.helper"
    side = {"kind": "direction", "feature_layout": list(FEATURE_NAMES), "features": list(STANDIN_FEATURES),
            "mean": [0.0] * k, "std": [1.0] * k, "outputs": ["up", "down"], "threshold": 0.5,
            "version": "standin-timing-only", "trained_on": {"note": "random weights: a timing stand-in, not a model"},
            "metrics": {}}
    out.with_suffix(".json").write_text(json.dumps(side, indent=1))
    return out, how


# -- torch eager ------------------------------------------------------------------------------------

def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


#: ONNX TensorProto element types -> torch dtypes, for Cast (the ones small graphs use).
CAST_DTYPES: dict[int, Any] = {}


def _torch_ops() -> dict[str, Callable[..., Any]]:
    """ONNX op -> torch eager call (inputs, attributes): the ops small MLPs / VAEs export to."""
    import torch

    CAST_DTYPES.update({1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 11: torch.float64})

    def gemm(a: Any, b: Any, c: Any = None, *, alpha: float = 1.0, beta: float = 1.0, transA: int = 0,
             transB: int = 0) -> Any:
        y = alpha * torch.matmul(a.T if transA else a, b.T if transB else b)
        return y if c is None else y + beta * c

    def gather(x: Any, i: Any, *, axis: int = 0) -> Any:
        return torch.select(x, axis, int(i)) if i.dim() == 0 else torch.index_select(x, axis, i.reshape(-1))

    def unsqueeze(x: Any, axes: Any) -> Any:
        for ax in sorted(int(v) for v in axes.reshape(-1)):
            x = torch.unsqueeze(x, ax)
        return x

    def reduce(fn: Callable[..., Any]) -> Callable[..., Any]:
        def op(x: Any, axes: Any = None, *, keepdims: int = 1, axes_attr: Any = None) -> Any:
            dims = [int(v) for v in axes.reshape(-1)] if axes is not None else list(range(x.dim()))
            return fn(x, dim=dims, keepdim=bool(keepdims))
        return op

    def slice_(x: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> Any:
        idx = [slice(None)] * x.dim()
        axs = axes.tolist() if axes is not None else list(range(len(starts)))
        sts = steps.tolist() if steps is not None else [1] * len(axs)
        for a, st, en, sp in zip(axs, starts.tolist(), ends.tolist(), sts, strict=True):
            idx[a] = slice(st, min(en, x.shape[a]), sp)
        return x[tuple(idx)]

    return {
        "Identity": lambda x: x, "Gemm": gemm, "MatMul": torch.matmul, "Relu": torch.relu, "Sigmoid": torch.sigmoid,
        "Tanh": torch.tanh, "Asinh": torch.asinh, "Exp": torch.exp, "Log": torch.log, "Abs": torch.abs,
        "Neg": torch.neg, "Sqrt": torch.sqrt, "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul,
        "Div": torch.div, "Pow": torch.pow, "Softmax": lambda x, *, axis=-1: torch.softmax(x, dim=axis),
        "Concat": lambda *xs, axis: torch.cat(xs, dim=axis), "Gather": gather, "Unsqueeze": unsqueeze,
        "Slice": slice_, "ReduceSum": reduce(torch.sum), "ReduceMean": reduce(torch.mean),
        "Reshape": lambda x, shape, *, allowzero=0: torch.reshape(x, [int(v) for v in shape]),
        "Clip": lambda x, lo=None, hi=None: torch.clamp(x, lo, hi),
        "ArgMin": lambda x, *, axis=0, keepdims=1, select_last_index=0: torch.argmin(x, dim=axis,
                                                                                    keepdim=bool(keepdims)),
        "Greater": torch.gt, "Sign": torch.sign, "Max": torch.maximum, "Min": torch.minimum,
        # both take the first of equal maxima, as ONNX says
        "Hardmax": lambda x, *, axis=-1: torch.nn.functional.one_hot(x.argmax(axis), x.shape[axis]).to(x.dtype),
        "ReduceMax": lambda x, *, axes=None, keepdims=1: torch.amax(x, dim=list(axes) if axes is not None else
                                                                    list(range(x.dim())), keepdim=bool(keepdims)),
        "Cast": lambda x, *, to, saturate=1: x.to(CAST_DTYPES[to]),
        "Split": lambda x, split=None, *, axis=0, num_outputs=None: torch.split(
            x, [int(v) for v in split] if split is not None else -(-x.shape[axis] // num_outputs), dim=axis),
    }


def torch_eager(model: Model, x32: np.ndarray, want: list[np.ndarray]) -> tuple[Callable[[], Any] | None, str]:
    """The model's ONNX graph executed op by op with torch eager calls (torch.no_grad, one thread): what the
    graph costs in torch without ONNX Runtime, up to the outputs Model.score binds (`want`: ONNX Runtime's).
    (None, why) without torch / onnx, for an op not covered here, or when the result differs."""
    try:
        import onnx
        import torch
        from onnx import numpy_helper
    except ImportError as e:
        return None, f"torch eager skipped: {e}"
    torch.set_num_threads(1)
    g = onnx.load_from_string(model.graph_bytes).graph
    ops = _torch_ops()
    missing = sorted({n.op_type for n in g.node if n.op_type not in ops and n.op_type != "Constant"})
    if missing:
        return None, f"torch eager skipped for {model.path.name}: ops {missing} not mapped"
    env0 = {t.name: torch.from_numpy(np.array(numpy_helper.to_array(t))) for t in g.initializer}
    steps = []
    for n in g.node:
        if n.op_type == "Constant":  # folded once, like an initializer
            env0[n.output[0]] = torch.from_numpy(np.array(numpy_helper.to_array(_attrs(n)["value"])))
        else:
            steps.append((ops[n.op_type], list(n.input), list(n.output), _attrs(n)))
    in_name, out_names = g.input[0].name, model.graph_outputs
    xt = torch.from_numpy(x32)

    def run() -> Any:
        env = dict(env0)
        env[in_name] = xt
        with torch.no_grad():
            for fn, ins, outs, kw in steps:
                got = fn(*[env[i] if i else None for i in ins], **kw)
                if len(outs) == 1:
                    env[outs[0]] = got
                else:  # Split: one tensor per output
                    env.update(zip(outs, got, strict=True))
        return [env[o] for o in out_names]

    got = [t.numpy() for t in run()]
    if any(a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(got, want, strict=True)):
        return None, f"torch eager skipped for {model.path.name}: its result differs from ONNX Runtime's"
    return run, ""


# -- per-call figures --------------------------------------------------------------------------------

def bench_model(model: Model, calls: int, warmup: int, notes: list[str]) -> list[dict[str, Any]]:
    sess = ort.InferenceSession(model.graph_bytes, session_options(1), providers=["CPUExecutionProvider"])
    # the outputs Model.score binds: the score, or a frame model's P and Q
    in_name, outs = sess.get_inputs()[0].name, model.graph_outputs
    widths = [model.graph_width] * 2 if model.frame is not None else [model.n_outputs]
    rng = np.random.default_rng(1)
    res = []
    for n in BATCHES:
        rows = np.zeros(n, FEATURES.dtype)  # the stage passes rows["values"]: a strided float64 view
        rows["values"] = rng.normal(size=(n, len(FEATURE_NAMES)))
        rows["values"][:, 0] = 100.0 + rng.normal(size=n)
        raw = rows["values"]
        x32 = model.graph_input(raw)  # the standardised features, or a frame model's frame
        out32 = [np.zeros((n, w), np.float32) for w in widths]
        # ortvalue_from_numpy on the CPU wraps the numpy buffer (no copy): ORT reads x32, writes out32
        binding = sess.io_binding()
        binding.bind_ortvalue_input(in_name, ort.OrtValue.ortvalue_from_numpy(x32))
        for name, buf in zip(outs, out32, strict=True):
            binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(buf))
        sess.run_with_iobinding(binding)
        want_graph = sess.run(outs, {in_name: x32})
        want = model.from_graph(want_graph)
        got = model.score(raw)
        for a, b in zip(out32, want_graph, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # each path computes the same thing
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        feed = {in_name: x32}
        paths: list[tuple[str, Callable[[], object]]] = [
            ("sess.run", lambda s=sess, o=outs, f=feed: s.run(o, f)),
            ("iobinding", lambda s=sess, b=binding: s.run_with_iobinding(b)),
            ("Model.score", lambda r=raw: model.score(r, copy=False)),
            ("Model.score+copy", lambda r=raw: model.score(r)),
        ]
        eager, why = torch_eager(model, x32, want_graph)
        if eager is not None:
            paths.append(("torch eager", eager))
        elif why not in notes:
            notes.append(why)
        for name, fn in paths:
            res.append({"method": name, "batch": n, **timed(fn, calls, warmup)})
    return res


# -- one symbol, both models -------------------------------------------------------------------------

def bench_both(models: dict[str, Model], calls: int, warmup: int) -> list[dict[str, Any]]:
    """Batch 1 of one symbol through both models, each path timed as one call: torch eager (both graphs op by
    op), plain `sess.run` (a dict, the graph inputs made once: standardised features, or a frame model's
    frame, whose pre and post kernels this path leaves out), and Model.score (the stage's path)."""
    rng = np.random.default_rng(3)
    rows = np.zeros(1, FEATURES.dtype)
    rows["values"] = rng.normal(size=(1, len(FEATURE_NAMES)))
    rows["values"][:, 0] = np.exp(rng.uniform(5, 11))  # a price: the VAE looks the symbol up from it
    raw = rows["values"]
    runs, eager = [], []
    for m in models.values():
        sess = ort.InferenceSession(m.graph_bytes, session_options(1), providers=["CPUExecutionProvider"])
        x32 = m.graph_input(raw)
        feed = {sess.get_inputs()[0].name: x32}
        runs.append((sess, m.graph_outputs, feed))
        fn, _ = torch_eager(m, x32, sess.run(m.graph_outputs, feed))
        eager.append(fn)
    a, d = models["anomaly"], models["direction"]

    def plain() -> None:
        for sess, outs, feed in runs:
            sess.run(outs, feed)

    res = [{"method": "sess.run (both)", **timed(plain, calls, warmup)},
           {"method": "Model.score (both)", **timed(lambda: (a.score(raw, copy=False), d.score(raw, copy=False)),
                                                    calls, warmup)}]
    pair, why = ModelPair.build(a, d)
    if pair is not None:
        oa, od = pair.score(raw)
        np.testing.assert_array_equal(oa, a.score(raw))  # one merged session computes exactly what two do
        np.testing.assert_array_equal(od, d.score(raw))
        res.append({"method": "ModelPair.score (both, one call)", **timed(lambda: pair.score(raw), calls, warmup)})
    else:
        print(f"note: ModelPair: {why}", file=sys.stderr)
    if all(e is not None for e in eager):
        res.insert(0, {"method": "torch eager (both)",
                       **timed(lambda: [e() for e in eager], max(calls // 5, 1), max(warmup // 5, 0))})
    return res


# -- the whole pass ----------------------------------------------------------------------------------

def bench_pass(anomaly: Path, direction: Path | None, calls: int, warmup: int, *, gap_s: float = 0.0,
               symbols: tuple[int, ...] = SYMBOLS) -> list[dict[str, Any]]:
    """InferenceAgent.do_work on real boards, per number of changed symbols (features written untimed).
    gap_s > 0: sleep that long before each pass, as the stage does between updates in a run (the VM may idle
    the CPU and its caches go cold: the pass then costs several times its back-to-back figure)."""
    from procs.agent import AgentContext
    from procs.inference import InferenceAgent
    from shm.metrics import RunState
    from shm.ring import Board
    from shm.segment import new_run_id, remove_run

    n_sym = max(SYMBOLS)
    syms = [f"SYM{i}" for i in range(n_sym)]
    run = new_run_id()
    res = []
    try:
        state = RunState.create(run, 1)
        fb = Board.create(run, "features", FEATURES, n_sym)
        sb = Board.create(run, "scores", SCORE, n_sym)
        cfg = Config.from_dict({"inference": {"model": str(anomaly), "direction_model": str(direction or ""),
                                              "min_interval_us": 0}})
        agent = InferenceAgent()
        agent.on_start(AgentContext(run=run, run_dir=tempfile.gettempdir(), config=cfg, symbols=syms,
                                    counters=state.stats.slots[0]["counters"], hist_hop=state.hist(0, 0),
                                    hist_e2e=state.hist(0, 1), log=logging.getLogger("bench_inference")))
        rng = np.random.default_rng(2)
        feats = np.zeros(n_sym, FEATURES.dtype)
        feats["symbol"] = np.arange(n_sym)
        feats["values"] = rng.normal(size=(n_sym, len(FEATURE_NAMES)))
        feats["values"][:, 0] = 100.0
        clock = time.perf_counter_ns
        for m in symbols:
            t = np.empty(calls, np.int64)
            for i in range(-warmup, calls):
                if gap_s:
                    time.sleep(gap_s)
                now = clock()
                for s in range(m):
                    feats["t_publish_ns"][s] = feats["t_origin_ns"][s] = now
                    fb.write(s, feats[s:s + 1])
                t0 = clock()
                k = agent.do_work()
                dt = clock() - t0
                if k != m:
                    raise RuntimeError(f"pass scored {k} symbols, expected {m}")
                if i >= 0:
                    t[i] = dt
            p10, p50, p90, p99 = np.percentile(t, [10, 50, 90, 99]) / 1000.0
            res.append({"models": "anomaly+direction" if direction else "anomaly", "symbols": m, "gap_ms": gap_s * 1e3,
                        "p10_us": float(p10), "median_us": float(p50), "p90_us": float(p90), "p99_us": float(p99),
                        "calls": calls,
                        "median_us_per_symbol": float(p50) / m})
        agent.on_close()
        for b in (fb, sb):
            b.close()
        state.close()
    finally:
        remove_run(run)  # nothing left in /dev/shm, whatever happened
    return res


def _cell(r: dict[str, Any]) -> str:
    return f"{r['median_us']:.2f} ({r['p10_us']:.2f}–{r['p90_us']:.2f})"


def table(per_model: dict[str, list[dict[str, Any]]], passes: list[dict[str, Any]]) -> str:
    lines = ["| model | method | " + " | ".join(f"batch {n}" for n in BATCHES) + " |",
             "|---|---|" + "---|" * len(BATCHES)]
    for label, res in per_model.items():
        for method in dict.fromkeys(r["method"] for r in res):
            cells = [_cell(next(r for r in res if r["method"] == method and r["batch"] == n)) for n in BATCHES]
            lines.append(f"| {label} | {method} | " + " | ".join(cells) + " |")
    lines += ["", "| inference pass (do_work) | " + " | ".join(f"{n} symbol{'s' * (n > 1)}" for n in SYMBOLS) + " |",
              "|---|" + "---|" * len(SYMBOLS)]
    for models in dict.fromkeys(p["models"] for p in passes):
        cells = [_cell(next(p for p in passes if p["models"] == models and p["symbols"] == n)) for n in SYMBOLS]
        lines.append(f"| {models} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anomaly", type=Path, default=ANOMALY, help=f"anomaly model (default {ANOMALY})")
    ap.add_argument("--direction", type=Path, default=None,
                    help=f"direction model (default {DIRECTION} when it exists, else a stand-in built here)")
    ap.add_argument("--calls", type=int, default=20_000, help="timed calls per figure (default 20000)")
    ap.add_argument("--warmup", type=int, default=2_000, help="untimed calls first (default 2000)")
    ap.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU (default: not pinned)")
    ap.add_argument("--standin", action="store_true",
                    help="time the stand-in direction model even when models/direction.onnx exists")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 300 calls, 50 warm-up")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--write-standin", type=Path, default=None, metavar="DIR",
                    help="only write the stand-in direction model (timing only) into DIR and exit, e.g. for "
                         "run.py --direction-model DIR/standin_direction.onnx; refused inside models/")
    args = ap.parse_args(argv)
    if args.write_standin is not None:
        folder = args.write_standin.resolve()
        if folder == (ROOT / "models").resolve() or (ROOT / "models").resolve() in folder.parents:
            ap.error(f"--write-standin {args.write_standin}: expected a folder outside {ROOT / 'models'} (the "
                     "stand-in has random weights: it is never shipped)")
        folder.mkdir(parents=True, exist_ok=True)
        path, how = build_standin(folder)
        print(f"{path} (+ sidecar): a STAND-IN direction model for timing only, random weights, built with {how}")
        return 0
    if args.quick:
        args.calls, args.warmup = 300, 50
    if args.calls < 1 or args.warmup < 0:
        ap.error("--calls must be >= 1 and --warmup >= 0")
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    env = _env()
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_inference-") as tmp:
        direction, standin = args.direction, None
        if direction is None and not args.standin and DIRECTION.is_file() and DIRECTION.with_suffix(".json").is_file():
            direction = DIRECTION
        elif direction is None:
            direction, how = build_standin(Path(tmp))
            why = "--standin" if args.standin else f"{DIRECTION} does not exist"
            standin = (f"{why}: the direction figures are a STAND-IN for timing only (an MLP of the same shape, "
                       f"{len(STANDIN_FEATURES)} features → {STANDIN_HIDDEN} → {STANDIN_HIDDEN} → 2 softmax, random "
                       f"weights, built with {how}; never shipped)")
            notes.append(standin)
            print(f"note: {standin}", file=sys.stderr)
        models = {"anomaly": Model.load(args.anomaly, kind="anomaly"),
                  "direction": Model.load(direction, kind="direction")}
        labels = {"anomaly": "anomaly", "direction": "direction (stand-in)" if standin else "direction"}
        per_model: dict[str, list[dict[str, Any]]] = {}
        for key, m in models.items():
            print(f"  {labels[key]}: {m!r}", file=sys.stderr, flush=True)
            per_model[labels[key]] = bench_model(m, args.calls, args.warmup, notes)
        both = bench_both(models, args.calls, args.warmup)
        passes = bench_pass(args.anomaly, direction, args.calls, args.warmup)
        passes += bench_pass(args.anomaly, None, args.calls, args.warmup)
        # after idle gaps like a run's (updates ms apart): 300 calls each at most, so 10 ms gaps take 3 s
        idle = [p for g in IDLE_GAPS_MS for p in bench_pass(args.anomaly, direction, min(args.calls, 300),
                                                            min(args.warmup, 20), gap_s=g / 1e3, symbols=(1,))]
    env["loadavg_after"] = os.getloadavg()
    print(table(per_model, passes))
    print("\n| pass after an idle gap (both models, 1 symbol) | p50 | p90 | p99 |\n|---|---|---|---|")
    for p in [next(x for x in passes if x["models"] == "anomaly+direction" and x["symbols"] == 1), *idle]:
        print(f"| {p['gap_ms']:g} ms | {p['median_us']:.2f} | {p['p90_us']:.2f} | {p['p99_us']:.2f} |")
    one = next(p for p in passes if p["models"] == "anomaly+direction" and p["symbols"] == 1)
    rows = [*both, {"method": "inference pass (do_work)", **one}]
    base = {r["method"]: r["median_us"] for r in both}
    print("\nbatch 1 of one symbol, both models (µs; ratio = the baseline's p50 / this p50)\n")
    print("| path | p50 | p99 | vs sess.run | vs torch eager |\n|---|---|---|---|---|")
    for r in rows:
        ratios = [f"{base[b] / r['median_us']:.2f}×" if b in base else "n/a"
                  for b in ("sess.run (both)", "torch eager (both)")]
        print(f"| {r['method']} | {r['median_us']:.2f} | {r['p99_us']:.2f} | {ratios[0]} | {ratios[1]} |")
    print()
    acceptance: dict[str, Any] = {"target_p50_us": TARGET_US, "batch": 1, "path": "Model.score"}
    for key, label in labels.items():
        med = next(r for r in per_model[label] if r["method"] == "Model.score" and r["batch"] == 1)["median_us"]
        acceptance[key] = {"median_us": med, "met": med <= TARGET_US}
        print(f"acceptance: {label} Model.score at batch 1: median {med:.2f} µs vs {TARGET_US} µs: "
              f"{'MET' if med <= TARGET_US else 'NOT MET'}")
    best = min((r for r in both if r["method"].startswith(("Model", "ModelPair"))), key=lambda r: r["median_us"])
    both_score = best["median_us"]
    acceptance["both_models_1_symbol_us"] = {"path": best["method"], "median_us": both_score,
                                             "met": both_score <= TARGET_US}
    acceptance["pass_both_models_1_symbol_us"] = one["median_us"]
    print(f"acceptance: both models for one symbol ({best['method']}): median {both_score:.2f} µs vs {TARGET_US} µs: "
          f"{'MET' if both_score <= TARGET_US else 'NOT MET'}")
    print(f"a whole pass with both models for one symbol: median {one['median_us']:.2f} µs, p99 {one['p99_us']:.2f} µs "
          "(board read, one ONNX Runtime call for both models when they merge, SCORE fill and publish, histograms)")
    for note in notes:
        print(f"note: {note}")
    print(f"load average before {env['loadavg_before'][0]:.2f}, after {env['loadavg_after'][0]:.2f} ({env['nproc']} "
          f"CPUs, affinity {env['affinity']}); wall-clock, {args.calls} timed calls per figure: noisy, read medians")
    if args.json is not None:
        meta = {key: {"path": str(m.path), "version": m.version, "features": len(m.features),
                      "outputs": m.outputs, "standin": key == "direction" and standin is not None}
                for key, m in models.items()}
        params = {"calls": args.calls, "warmup": args.warmup, "cpu": args.cpu, "feature_layout": feature_layout_hash()}
        args.json.write_text(json.dumps({"env": env, "params": params, "models": meta, "results": per_model,
                                         "pass": passes, "pass_after_idle": idle, "both_models_1_symbol": both,
                                         "acceptance": acceptance,
                                         "notes": notes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
