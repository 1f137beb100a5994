"""Train the anomaly model on simulated markets and write models/anomaly.onnx + its sidecar JSON.

Pipeline: the simulator (procs/sources/simulator.py) emits Binance combined-stream JSON with labelled
anomaly windows → the real parser and book kernel (the same code as the book stage) compute the
16-value feature vector per book update → each row is labelled with the kind of the anomaly window of
its symbol that contains its exchange time E (or "none") → a small MLP (softmax over none + 4 kinds)
is trained with class weights, its alert threshold picked for max F1 on a validation split (the last
fraction of every training seed), and it is evaluated on a held-out seed never seen in training.

Why multi-class (softmax) and not multi-label: the simulator injects one anomaly at a time per symbol,
so a row belongs to at most one window (overlaps are counted and reported, the later window wins), and
a softmax makes column 0 = 1 - P(none) a proper P(anomaly) that the kinds sum up to.

The exported graph takes z = (x - mean) / std in float32 (procs/model.py applies the sidecar mean/std;
here mean = 0 and std a per-feature scale, see `input_scales`), applies asinh (a signed log, so the
100x different scales of the symbols become offsets), then the MLP, and outputs
[P(anomaly), P(price_spike), P(volume_surge), P(spread_blowout), P(book_wipe)].

    python scripts/train_model.py                       # the shipped model (see models/README.md)
    python scripts/train_model.py --seconds 60 --epochs 3 --out /tmp/m.onnx   # a quick try
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from procs.kernels.book import BookState  # noqa: E402
from procs.kernels.parse_json import ERR_NO_SPACE, Parser, SymbolTable  # noqa: E402
from shm.features import FEATURE_NAMES  # noqa: E402
from shm.records import BOOK, FEATURES, FLAG_BOOK_VALID, MARKET  # noqa: E402

#: Anomaly kinds the simulator labels, in output order (class 0 is "none").
KINDS: tuple[str, ...] = ("price_spike", "volume_surge", "spread_blowout", "book_wipe")
#: Output columns of the exported graph.
OUTPUTS: list[str] = ["anomaly", *KINDS]
#: Features the model reads: all 16. `mid` (as log price) tells the symbols apart, whose calm spreads,
#: volatilities and flows differ by orders of magnitude.
MODEL_FEATURES: list[str] = list(FEATURE_NAMES)
#: Features bounded in [-1, 1]: scaled by 1, not by their spread.
BOUNDED = frozenset({"imbalance_1", "imbalance_5", "imbalance_20", "trade_imbalance_10s"})
#: Fixed start of simulated time (2024-01-01 UTC), so runs do not depend on the wall clock.
START_MS = 1_704_067_200_000
#: Records parsed per book-kernel call.
BATCH = 1 << 14
DEFAULT_SYMBOLS = "BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Dataset:
    """Feature rows of one simulated run, with labels (0 none, 1 + index into KINDS)."""

    x: np.ndarray  # (n, 16) float64, FEATURE_NAMES order
    y: np.ndarray  # (n,) int64
    symbol: np.ndarray  # (n,) int64 symbol id
    e_ms: np.ndarray  # (n,) int64 exchange time
    windows: list[dict]  # the simulator's labels (kind, symbol, start_E_ms, end_E_ms, ...)
    symbols: list[str]
    overlaps: int = 0

    def __len__(self) -> int:
        return len(self.y)


def simulate(seed: int, seconds: float, symbols: list[str], *, anomalies_per_min: float = 2.0,
             depth_interval_ms: int = 100, warmup_s: float = 10.0, progress: bool = True) -> Dataset:
    """Run the simulator for `seconds` of simulated time through parser + book; labelled feature rows.

    Rows of the first `warmup_s` of each symbol are dropped: the 10 s windows and returns are still
    filling then, so they would teach the model that a cold start is an anomaly.
    """
    from procs.sources.simulator import SimParams, Simulator

    sim = Simulator(SimParams(symbols=list(symbols), seed=seed, anomalies_per_min=anomalies_per_min,
                              depth_interval_ms=depth_interval_ms, rate_scale=1.0, start_ms=START_MS))
    table = SymbolTable(list(symbols))
    parser = Parser(table)
    st = BookState(len(symbols))
    st.warm_up()
    recs = np.zeros(BATCH, MARKET.dtype)
    ob = np.zeros(BATCH, BOOK.dtype)
    of = np.zeros(BATCH, FEATURES.dtype)
    xs: list[np.ndarray] = []
    syms: list[np.ndarray] = []
    es: list[np.ndarray] = []

    def flush(n: int) -> None:
        k = st.process(recs, n, ob, of)
        valid = (of["flags"][:k] & FLAG_BOOK_VALID) != 0  # an unsynced book has all-zero book features
        xs.append(of["values"][:k][valid].copy())
        syms.append(of["symbol"][:k][valid].astype(np.int64))
        es.append(ob["exch_ts_ms"][:k][valid].copy())

    t0 = None
    end_ns = int(seconds * 1e9)
    n = 0
    next_report = 0.0
    wall = time.perf_counter()
    for ts, raw in sim.messages():
        if t0 is None:
            t0 = ts
        if ts - t0 >= end_ns:
            break
        k = parser.parse(raw, ts, recs, n)
        if k == ERR_NO_SPACE:
            flush(n)
            n = 0
            k = parser.parse(raw, ts, recs, 0)
            if k == ERR_NO_SPACE:
                raise RuntimeError(f"one message has more than {BATCH} records")
        if k > 0:
            n += k
        if progress and (ts - t0) / 1e9 >= next_report:
            log(f"  seed {seed}: {next_report:5.0f}/{seconds:.0f} s simulated, "
                f"{time.perf_counter() - wall:5.1f} s wall")
            next_report += max(seconds / 10, 1.0)
    if n:
        flush(n)
    x = np.concatenate(xs) if xs else np.zeros((0, len(FEATURE_NAMES)))
    sym = np.concatenate(syms) if syms else np.zeros(0, np.int64)
    e = np.concatenate(es) if es else np.zeros(0, np.int64)
    # ids in the table follow `symbols`; the simulator's labels name symbols
    y = np.zeros(len(x), np.int64)
    overlaps = 0
    windows = [dict(w) for w in sim.labels]
    for w in windows:
        sid = table.lookup(w["symbol"])
        kind = KINDS.index(w["kind"]) + 1
        inside = (sym == sid) & (e >= w["start_E_ms"]) & (e <= w["end_E_ms"])
        overlaps += int(np.count_nonzero(inside & (y != 0)))
        y[inside] = kind
    keep = np.ones(len(x), bool)
    for sid in range(len(symbols)):
        m = sym == sid
        if m.any():
            keep &= ~m | (e >= e[m].min() + warmup_s * 1000)
    if progress:
        counts = {k: int(np.count_nonzero(y[keep] == i + 1)) for i, k in enumerate(KINDS)}
        log(f"  seed {seed}: {int(keep.sum())} rows ({len(x) - int(keep.sum())} warm-up dropped), "
            f"{len(windows)} windows, anomaly rows {counts}, overlapping rows {overlaps}, "
            f"{time.perf_counter() - wall:.1f} s wall")
    return Dataset(x[keep], y[keep], sym[keep], e[keep], windows, list(symbols), overlaps)


# -- metrics ---------------------------------------------------------------------------------------

def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4)}


def best_threshold(p_anom: np.ndarray, is_anom: np.ndarray) -> tuple[float, float]:
    """Threshold on P(anomaly) with the best F1 (rows above it alert); returns (threshold, f1)."""
    order = np.argsort(-p_anom, kind="stable")
    s = p_anom[order]
    t = is_anom[order].astype(np.int64)
    tp = np.cumsum(t)
    fp = np.cumsum(1 - t)
    pos = int(t.sum())
    f1 = 2 * tp / np.maximum(tp + fp + pos, 1)
    # only cut between distinct scores, else equal scores would split
    last = np.r_[s[1:] != s[:-1], True]
    f1 = np.where(last, f1, -1.0)
    i = int(np.argmax(f1))
    nxt = s[i + 1] if i + 1 < len(s) else 0.0
    return float((s[i] + nxt) / 2), float(f1[i])


def evaluate(scores: np.ndarray, ds: Dataset, threshold: float) -> dict:
    """Held-out metrics: row level (overall and per kind) and window level (was it caught, how fast)."""
    alert = scores[:, 0] > threshold
    pred_kind = np.where(alert, 1 + np.argmax(scores[:, 1:], axis=1), 0)
    y = ds.y
    truth = y != 0
    out: dict = {"rows": len(y), "anomaly_rows": int(truth.sum()), "threshold": round(threshold, 6)}
    out["overall"] = _prf(int(np.sum(alert & truth)), int(np.sum(alert & ~truth)), int(np.sum(~alert & truth)))
    out["overall"]["average_precision"] = round(_average_precision(scores[:, 0], truth), 4)
    per: dict = {}
    for i, kind in enumerate(KINDS):
        c = i + 1
        tk = y == c
        pk = pred_kind == c
        m = _prf(int(np.sum(pk & tk)), int(np.sum(pk & ~tk)), int(np.sum(~pk & tk)))
        # what pauses the strategy is the alert, whatever kind the model names
        m["alert_recall"] = round(float(np.mean(alert[tk])) if tk.any() else 0.0, 4)
        m["rows"] = int(tk.sum())
        per[kind] = m
    out["per_kind"] = per
    out["windows"] = _window_metrics(alert, ds)
    n_min = _minutes(ds)
    out["false_alert_rows_per_symbol_minute"] = round(float(np.sum(alert & ~truth)) / max(n_min, 1e-9), 2)
    out.update(_false_episodes(alert, ds, n_min))
    return out


def _false_episodes(alert: np.ndarray, ds: Dataset, n_min: float, tail_ms: int = 10_000) -> dict:
    """Runs of consecutive alerting rows of a symbol that touch no window: what would pause the
    strategy for nothing. `after_window` ones start within `tail_ms` of a window's end (the 10 s
    features still remember the anomaly), `isolated` ones do not."""
    after, isolated = 0, 0
    for sid in range(len(ds.symbols)):
        m = np.flatnonzero(ds.symbol == sid)  # rows of one symbol, in time order
        a, y, e = alert[m], ds.y[m], ds.e_ms[m]
        ends = np.sort([w["end_E_ms"] for w in ds.windows if w["symbol"].upper() == ds.symbols[sid]])
        edges = np.diff(np.r_[0, a.astype(np.int8), 0])
        for lo, hi in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
            if np.any(y[lo:hi] != 0):
                continue
            k = np.searchsorted(ends, e[lo], side="right") - 1  # the last window that ended before
            if k >= 0 and e[lo] - ends[k] <= tail_ms:
                after += 1
            else:
                isolated += 1
    hours = max(n_min / 60, 1e-9)
    return {"false_alert_episodes_per_symbol_hour": {"after_window": round(after / hours, 1),
                                                     "isolated": round(isolated / hours, 1)}}


def _minutes(ds: Dataset) -> float:
    total = 0.0
    for sid in range(len(ds.symbols)):
        e = ds.e_ms[ds.symbol == sid]
        if len(e):
            total += (e.max() - e.min()) / 60_000
    return total


def _average_precision(score: np.ndarray, truth: np.ndarray) -> float:
    if not truth.any():
        return 0.0
    order = np.argsort(-score, kind="stable")
    t = truth[order]
    tp = np.cumsum(t)
    prec = tp / np.arange(1, len(t) + 1)
    return float(np.sum(prec[t]) / t.sum())


def _window_metrics(alert: np.ndarray, ds: Dataset) -> dict:
    """Per kind: fraction of windows with at least one alerting row inside, and the median delay to it."""
    res: dict = {}
    for kind in KINDS:
        caught, total, delays = 0, 0, []
        for w in ds.windows:
            if w["kind"] != kind or w["symbol"].upper() not in ds.symbols:
                continue
            sid = ds.symbols.index(w["symbol"].upper())
            m = (ds.symbol == sid) & (ds.e_ms >= w["start_E_ms"]) & (ds.e_ms <= w["end_E_ms"])
            if not m.any():
                continue  # in the warm-up, or past the end of the run
            total += 1
            hit = alert & m
            if hit.any():
                caught += 1
                delays.append(float(ds.e_ms[np.argmax(hit)] - w["start_E_ms"]))
        res[kind] = {"windows": total, "caught": caught,
                     "recall": round(caught / total, 4) if total else 0.0,
                     "median_delay_ms": round(float(np.median(delays)), 1) if delays else None}
    return res


# -- training --------------------------------------------------------------------------------------

def input_scales(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sidecar mean / std per feature: the graph sees asinh((x - mean) / std), a signed log past std.

    mean is 0 so the sign (direction of a return, of the flow) survives. std is 1 for `mid` (asinh
    gives log price: the per-symbol baseline the other features are judged against) and for the
    features bounded in [-1, 1] (asinh is nearly linear there); for the heavy-tailed ones it is the
    10th percentile of the non-zero |x|, so the typical and the extreme values of every symbol, whose
    scales differ by 100x (bps of a 60 000 vs a 150 price), all land in the log part.
    """
    mean = np.zeros(x.shape[1])
    std = np.ones(x.shape[1])
    for j, name in enumerate(MODEL_FEATURES):
        if name == "mid" or name in BOUNDED:
            continue
        a = np.abs(x[:, j])
        a = a[a > 0]
        std[j] = max(float(np.percentile(a, 10)), 1e-9) if len(a) else 1.0
    return mean, std


def build_net(n_in: int, hidden: int, n_classes: int):
    import torch
    from torch import nn

    class Net(nn.Module):
        """asinh -> MLP logits over none + kinds; `forward` returns [P(anomaly), P(kind)...] (exported).

        `u_mean` / `u_std` standardise the asinh outputs for training; `fold()` moves them into the
        first layer so the exported graph is asinh -> Gemm -> Relu -> Gemm -> Relu -> Gemm -> Softmax.
        """

        def __init__(self) -> None:
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, n_classes))
            self.register_buffer("u_mean", torch.zeros(n_in))
            self.register_buffer("u_std", torch.ones(n_in))
            self.folded = False

        def logits(self, z: torch.Tensor) -> torch.Tensor:
            u = torch.asinh(z)
            if not self.folded:
                u = (u - self.u_mean) / self.u_std
            return self.mlp(u)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            p = torch.softmax(self.logits(z), dim=-1)
            # column 0 = 1 - P(none) = P(some anomaly); the kind columns follow
            return torch.cat([1.0 - p[:, :1], p[:, 1:]], dim=-1)

        @torch.no_grad()
        def fold(self) -> None:
            """W' = W / u_std, b' = b - W' u_mean: same outputs, two fewer ops in the graph."""
            first = self.mlp[0]
            w = first.weight / self.u_std
            first.bias -= w @ self.u_mean
            first.weight.copy_(w)
            self.folded = True

    return Net()


def train(x: np.ndarray, y: np.ndarray, *, epochs: int, hidden: int, seed: int, batch: int = 512,
          lr: float = 3e-3, weight_power: float = 0.5):
    """Adam on class-weighted cross entropy; weights (n / n_c)^power keep rare kinds from drowning."""
    import torch

    torch.manual_seed(seed)
    net = build_net(x.shape[1], hidden, len(KINDS) + 1)
    u = np.arcsinh(x)
    net.u_mean.copy_(torch.tensor(u.mean(axis=0), dtype=torch.float32))
    net.u_std.copy_(torch.tensor(np.maximum(u.std(axis=0), 1e-6), dtype=torch.float32))
    counts = np.bincount(y, minlength=len(KINDS) + 1).astype(np.float64)
    w = (counts.sum() / np.maximum(counts, 1)) ** weight_power
    w = w / w[0]
    log(f"  class counts {counts.astype(int).tolist()}, weights {np.round(w, 2).tolist()}")
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(w, dtype=torch.float32))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(perm), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = loss_fn(net.logits(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        log(f"  epoch {ep + 1}/{epochs}: loss {total / len(perm):.4f}")
    net.eval()
    return net


def predict(net, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return net(torch.tensor(x, dtype=torch.float32)).numpy()


def export(net, n_in: int, out: Path) -> None:
    """ONNX with a dynamic batch axis, via the TorchScript exporter (works offline, no onnxscript)."""
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    # the TorchScript exporter has no rule for asinh although ONNX has the op (opset >= 9)
    torch.onnx.register_custom_op_symbolic("aten::asinh", lambda g, x: g.op("Asinh", x), 9)
    with warnings.catch_warnings():
        # torch >= 2.9 defaults to the dynamo exporter, which needs onnxscript; the legacy one warns
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(2, n_in),), str(out), dynamo=False, input_names=["x"],
                          output_names=["p"], dynamic_axes={"x": {0: "batch"}, "p": {0: "batch"}},
                          opset_version=17, do_constant_folding=True)


def verify_export(net, path: Path, x: np.ndarray) -> float:
    """onnx.checker plus ONNX Runtime against torch on real rows; returns the max abs difference."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.astype(np.float32)})[0]
    want = predict(net, x)
    diff = float(np.max(np.abs(got - want)))
    if diff > 1e-5:
        raise RuntimeError(f"exported graph differs from torch: max abs diff {diff}")
    return diff


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1200.0, help="simulated seconds per seed")
    ap.add_argument("--train-seeds", default="1,2,3,4", help="comma-separated simulator seeds for training")
    ap.add_argument("--test-seed", type=int, default=7, help="held-out simulator seed for the metrics")
    ap.add_argument("--symbols", default=DEFAULT_SYMBOLS, help="comma-separated symbols")
    ap.add_argument("--epochs", type=int, default=20, help="passes over the training rows")
    ap.add_argument("--hidden", type=int, default=32, help="width of the two hidden layers")
    ap.add_argument("--anomalies-per-min", type=float, default=2.0, help="simulator anomaly rate")
    ap.add_argument("--val-fraction", type=float, default=0.2,
                    help="last fraction of each training seed used to pick the threshold")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads (shared cores)")
    ap.add_argument("--out", default="models/anomaly.onnx", help="ONNX path; the sidecar goes next to it (.json)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.torch_threads)
    symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
    train_seeds = [int(s) for s in args.train_seeds.split(",") if s.strip()]
    if args.test_seed in train_seeds:
        ap.error(f"--test-seed {args.test_seed} is also a training seed: the metrics would not be held out")
    t_start = time.perf_counter()
    feat_idx = [FEATURE_NAMES.index(f) for f in MODEL_FEATURES]

    tr_x, tr_y, va_x, va_y = [], [], [], []
    for seed in train_seeds:
        log(f"simulating training seed {seed} ({args.seconds:.0f} s, {len(symbols)} symbols)")
        ds = simulate(seed, args.seconds, symbols, anomalies_per_min=args.anomalies_per_min)
        # validation = the last fraction of simulated time: no row of a window on both sides
        cut = np.quantile(ds.e_ms, 1 - args.val_fraction) if len(ds) else 0
        va = ds.e_ms >= cut
        tr_x.append(ds.x[~va][:, feat_idx])
        tr_y.append(ds.y[~va])
        va_x.append(ds.x[va][:, feat_idx])
        va_y.append(ds.y[va])
    log(f"simulating test seed {args.test_seed}")
    test = simulate(args.test_seed, args.seconds, symbols, anomalies_per_min=args.anomalies_per_min)
    t_sim = time.perf_counter() - t_start

    xtr, ytr = np.concatenate(tr_x), np.concatenate(tr_y)
    xva, yva = np.concatenate(va_x), np.concatenate(va_y)
    mean, std = input_scales(xtr)

    def norm(a: np.ndarray) -> np.ndarray:
        return (a - mean) / std

    log(f"training on {len(ytr)} rows, validating on {len(yva)}")
    net = train(norm(xtr), ytr, epochs=args.epochs, hidden=args.hidden, seed=train_seeds[0])
    p_va = predict(net, norm(xva))
    threshold, f1_va = best_threshold(p_va[:, 0], yva != 0)
    log(f"threshold {threshold:.4f} (validation F1 {f1_va:.4f})")

    p_te = predict(net, norm(test.x[:, feat_idx]))
    metrics = evaluate(p_te, test, threshold)
    metrics["test_seed"] = args.test_seed
    metrics["validation_f1"] = round(f1_va, 4)

    out = Path(args.out)
    before = predict(net, norm(test.x[:2000, feat_idx]))
    net.fold()
    fold_diff = float(np.max(np.abs(predict(net, norm(test.x[:2000, feat_idx])) - before)))
    if fold_diff > 1e-4:
        raise RuntimeError(f"folding the input standardisation changed the outputs by {fold_diff}")
    export(net, len(feat_idx), out)
    diff = verify_export(net, out, norm(test.x[:2000, feat_idx]))
    side = {
        "features": MODEL_FEATURES,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "outputs": OUTPUTS,
        "threshold": threshold,
        "version": f"mlp{args.hidden}x2-sim-v1",
        "architecture": f"graph input z = (x - mean) / std (applied by procs/model.py) -> asinh -> "
                        f"Linear({len(feat_idx)},{args.hidden}) -> ReLU -> Linear({args.hidden},{args.hidden}) -> "
                        f"ReLU -> Linear({args.hidden},{len(KINDS) + 1}) -> softmax -> [1 - p_none, p_kinds]",
        "trained_on": {"simulator": "procs.sources.simulator", "train_seeds": train_seeds,
                       "test_seed": args.test_seed, "seconds_per_seed": args.seconds, "symbols": symbols,
                       "anomalies_per_min": args.anomalies_per_min, "warmup_dropped_s": 10.0,
                       "train_rows": len(ytr), "validation_rows": len(yva),
                       "epochs": args.epochs, "command": " ".join(["python scripts/train_model.py",
                                                            *(sys.argv[1:] if argv is None else argv)])},
        "metrics": metrics,
    }
    out.with_suffix(".json").write_text(json.dumps(side, indent=2) + "\n")
    t_total = time.perf_counter() - t_start
    log(f"wrote {out} ({out.stat().st_size} bytes, export max |onnx - torch| {diff:.2e}) and "
        f"{out.with_suffix('.json')}; simulation {t_sim:.0f} s, total {t_total:.0f} s")
    log(json.dumps({"overall": metrics["overall"], "per_kind": metrics["per_kind"],
                    "windows": metrics["windows"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
