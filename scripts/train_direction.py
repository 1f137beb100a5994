"""Train the direction model on a real capture and write models/direction.onnx + its sidecar and model card.

Task: P(the mid's next move is up) from the book's feature vector (order-flow imbalance, microprice
offset, imbalances, spread, recent returns, volatility, optionally trade flow). Rows and labels come
from `procs.datasets` (the book stage's own parser and kernel over the capture; `Dataset.direction`:
1 up, 0 down, -1 skipped).

Sampling (`--sample`, default `change`): one row per mid change, the book update that moved the mid,
labelled with the sign of the *next* change. Every book update (`all`) would repeat one label over
every update of a quiet stretch: a few long one-way stretches then dominate the hit rate (and the
majority baseline), and the rows are far fewer independent observations than they look. With one
row per change, rows are distinct label events and a Wilson interval on them is meaningful. The
shipped model is also scored on every update of the test tail (`metrics.test_all_rows`), since the
inference stage scores every update.

Time split of the capture (exchange time E), nothing shuffled:

    |--------------- training span ---------------|- embargo -|------- test tail -------|
    |  fold blocks: train on the earlier ones, validate on the later ones (forward chaining) |

- Labels of a training part are computed on that part alone (`Dataset.take(part).direction()`), so a
  row whose next mid move happens after the part's end has no label there: no training label looks
  past its own part (a purge), and the embargo adds a gap on top.
- Model choice (logistic regression vs a small MLP, feature set, input transform, L2, symmetric or not,
  and with `--sample all` row or event weighting) is made on the validation folds only, by the hit rate
  over all their rows (ties: log loss). The chosen configuration is refitted on the whole training span
  and evaluated once on the test tail, next to two baselines on the same rows: the training span's
  majority class, and "up iff imbalance_1 > 0" (ties: majority).
- With `--sample all` rows are not independent: every row between two mid changes shares one label.
  Confidence intervals and the model-vs-baseline tests therefore resample label events (runs of
  constant mid); row-level Wilson intervals and McNemar are reported beside them. With `change` every
  row is its own event and the two agree.
- `--also CAPTURE...` (default: the other shared captures) repeats the split, the fit and the test on
  each other capture with the configuration chosen here (no selection, nothing tuned on their tails),
  for the model card; the shipped graph is the one trained on `--capture`.

The exported graph reads z = (x - mean) / std (procs/model.py applies the sidecar's training-span
constants) and outputs [P(up), P(down)]; threshold 0.5.

    python scripts/train_direction.py                                  # the shipped model
    python scripts/train_direction.py --grid quick --also --out /tmp/d.onnx   # a quick try (seconds)
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from procs import metrics_ml as mm  # noqa: E402
from procs.datasets import FEATURE_LAYOUT, Dataset, from_capture  # noqa: E402
from shm.features import FEATURE_INDEX, FEATURE_NAMES  # noqa: E402

#: The capture the shipped model is trained and tested on (read in place, never copied into the repo).
DEFAULT_DATA_DIR = Path(os.environ.get("TICKPIPE_DATA") or ROOT.parent / "shared" / "data" / "binance")
DEFAULT_CAPTURE = "usdm_btcusdt_20240808_120s.lines.gz"
#: Other shared captures scored with the chosen configuration (each trained on its own earlier part).
OTHER_CAPTURES: list[str] = ["usdm_4sym_20210722.lines.gz", "spot_4sym_20211012.lines.gz"]
#: Output columns of the graph: column 0 is what procs/inference.py puts in SCORE as P(up).
OUTPUTS: list[str] = ["p_up", "p_down"]
#: Fixed ONNX opset of the export.
OPSET = 17
#: Maximum |onnx - torch| accepted by the parity check.
PARITY_TOL = 1e-5
#: The features the issue names: order-flow imbalance, microprice offset, imbalances, spread, returns, volatility.
ISSUE_FEATURES: list[str] = ["ofi", "ofi_1s", "microprice_bps", "imbalance_1", "imbalance_5", "imbalance_20",
                             "spread_bps", "ret_100ms_bps", "ret_1s_bps", "ret_10s_bps", "vol_10s_bps"]
FEATURE_SETS: dict[str, list[str]] = {
    # scale-free top-of-book pressure (no base-unit flows), with and without the last returns
    "top": ["imbalance_1", "microprice_bps", "spread_bps"],
    "top+ret": ["imbalance_1", "microprice_bps", "spread_bps", "ret_100ms_bps", "ret_1s_bps"],
    "book": ["ofi", "ofi_1s", "microprice_bps", "imbalance_1", "imbalance_5", "imbalance_20", "spread_bps"],
    "book+trades": ["ofi", "ofi_1s", "microprice_bps", "imbalance_1", "imbalance_5", "imbalance_20", "spread_bps",
                    "trade_flow_1s", "trade_imbalance_10s"],
    "issue": ISSUE_FEATURES,
    "issue+trades": [*ISSUE_FEATURES, "trade_flow_1s", "trade_imbalance_10s"],
}
#: Features whose sign is a direction (flip the book: they flip); the rest (spread, volatility) are magnitudes.
SIGNED = frozenset({"ofi", "ofi_1s", "microprice_bps", "imbalance_1", "imbalance_5", "imbalance_20",
                    "ret_100ms_bps", "ret_1s_bps", "ret_10s_bps", "trade_flow_1s", "trade_imbalance_10s",
                    "vwap_offset_10s_bps"})
#: Hidden layer widths per model name; () is logistic regression.
#: (A wider mlp32x2 was in a first grid: validation ROC-AUC below 0.5 in every variant, ~100 label events
#: are too few for it.)
ARCHS: dict[str, tuple[int, ...]] = {"logreg": (), "mlp16": (16,)}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Config:
    """One candidate: model, features, input transform, L2 strength."""

    arch: str
    features: str
    transform: str  # "linear": the graph sees z; "asinh": asinh(z), a signed log for heavy-tailed flows
    l2: float
    symmetric: bool = False  # logit(-signed features) = -logit: P(up) = 0.5 when every signed feature is 0
    weighting: str = "rows"  # "rows": every row counts once; "events": every label event counts once

    @property
    def name(self) -> str:
        sym = "/sym" if self.symmetric else ""
        return f"{self.arch}/{self.features}/{self.transform}/l2={self.l2:g}{sym}/{self.weighting}"


def grid(which: str, sample: str = "all") -> list[Config]:
    """Candidates compared on the validation folds ('full'), or a two-model grid for smoke tests ('quick').

    Event weighting only differs from row weighting when several sampled rows share a label event."""
    if which == "quick":
        return [Config("logreg", "book", "linear", 1e-3, True), Config("mlp16", "book+trades", "asinh", 1e-3, True)]
    weightings = ("rows",) if sample == "change" else ("rows", "events")
    return [Config(a, f, t, l2, sym, w) for a in ARCHS for f in FEATURE_SETS for t in ("linear", "asinh")
            for l2 in (1e-3, 1e-1) for sym in (False, True) for w in weightings]


# -- split -------------------------------------------------------------------------------------------

@dataclass
class Split:
    """Row masks over the capture's dataset and the labels each part uses (-1: not used)."""

    y_train: np.ndarray  # labels computed on the training span alone (purged at its end)
    y_test: np.ndarray  # labels of the full capture, test tail only
    train_end_ms: int  # first E not in the training span
    test_start_ms: int  # first E of the test tail
    folds: list[tuple[np.ndarray, np.ndarray, int, int]]  # (y_fit, y_val, fit_end_ms, val_start_ms) per fold

    @property
    def train(self) -> np.ndarray:
        return self.y_train >= 0

    @property
    def test(self) -> np.ndarray:
        return self.y_test >= 0


def labels_within(ds: Dataset, part: np.ndarray, horizon_ms: int) -> np.ndarray:
    """Direction labels computed on the rows of `part` alone (-1 elsewhere): a label needing a row after the
    part's end is -1, so nothing in the part looks past it."""
    y = np.full(len(ds), -1, np.int64)
    y[part] = ds.take(part).direction(horizon_ms)
    return y


def make_split(ds: Dataset, *, horizon_ms: int, test_fraction: float, embargo_s: float, n_blocks: int,
               n_folds: int, sample: np.ndarray | None = None) -> Split:
    """Training span / embargo / test tail over exchange time, and forward-chaining folds in the training span.

    `sample` (a row mask, `Dataset.sample`) keeps only those rows; labels are still computed on all rows."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction expected in (0, 1) found={test_fraction}")
    if not 1 <= n_folds < n_blocks:
        raise ValueError(f"n_folds expected in [1, n_blocks={n_blocks}) found={n_folds}")
    e = ds.e_ms
    t0, t1 = int(e.min()), int(e.max())
    embargo = round(embargo_s * 1000)
    test_start = t0 + round((1 - test_fraction) * (t1 - t0))
    train_end = test_start - embargo
    if train_end <= t0:
        raise ValueError(f"embargo {embargo_s} s leaves no training span before the test start")
    y_train = labels_within(ds, e < train_end, horizon_ms)
    y_full = ds.direction(horizon_ms)
    y_test = np.where(e >= test_start, y_full, -1)
    folds = []
    edges = t0 + np.round(np.linspace(0, 1, n_blocks + 1) * (train_end - t0)).astype(np.int64)
    for k in range(n_blocks - n_folds, n_blocks):
        val_start, val_end = int(edges[k]), int(edges[k + 1])
        fit_end = val_start - embargo
        y_fit = labels_within(ds, e < fit_end, horizon_ms)
        # the validation block is purged at its end too: its labels stay inside the training span
        y_val = labels_within(ds, (e >= val_start) & (e < val_end), horizon_ms)
        folds.append((y_fit, y_val, fit_end, val_start))
    if sample is not None:
        y_train, y_test = np.where(sample, y_train, -1), np.where(sample, y_test, -1)
        folds = [(np.where(sample, f, -1), np.where(sample, v, -1), fe, vs) for f, v, fe, vs in folds]
    return Split(y_train, y_test, train_end, test_start, folds)


def label_events(ds: Dataset) -> np.ndarray:
    """Per row, the id of its run of constant mid on its symbol: rows of one run share the next mid move,
    so a run is one label event (the unit the confidence intervals resample). Exact for horizon 0; for a
    fixed horizon the label-sharing groups differ and the runs are an approximation."""
    ev = np.zeros(len(ds), np.int64)
    base = 0
    for s in np.unique(ds.symbol):
        idx = np.flatnonzero(ds.symbol == s)
        run = np.r_[0, np.cumsum(np.diff(ds.mid[idx]) != 0)]
        ev[idx] = base + run
        base += int(run[-1]) + 1
    return ev


# -- model ---------------------------------------------------------------------------------------------

def build_net(n_in: int, hidden: tuple[int, ...], transform: str, flip: np.ndarray | None = None) -> Any:
    """The graph: z -> [asinh] -> MLP (or one Linear: logistic regression) -> logit -> [P(up), P(down)].

    With `flip` (-1 for the signed features, +1 for the others) the logit is h(u) - h(flip * u): odd in
    the signed features, so mirroring the book (bids <-> asks, returns negated) swaps P(up) and P(down) and
    no drift of the training period can hide in a bias."""
    import torch
    from torch import nn

    class DirectionNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            k = n_in
            for h in hidden:
                layers += [nn.Linear(k, h), nn.ReLU()]
                k = h
            # a bias would cancel in h(u) - h(flip * u) anyway
            layers.append(nn.Linear(k, 1, bias=flip is None))
            self.body = nn.Sequential(*layers)
            self.transform = transform
            self.symmetric = flip is not None
            self.register_buffer("flip", torch.tensor(flip if flip is not None else np.ones(n_in),
                                                      dtype=torch.float32))

        def logit(self, z: torch.Tensor) -> torch.Tensor:
            u = torch.asinh(z) if self.transform == "asinh" else z
            if self.symmetric:
                return self.body(u)[:, 0] - self.body(u * self.flip)[:, 0]
            return self.body(u)[:, 0]

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            p = torch.sigmoid(self.logit(z)).unsqueeze(1)
            return torch.cat([p, 1.0 - p], dim=1)

    return DirectionNet()


def standardiser(x: np.ndarray, signed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Training-rows mean and std per column (std 1 for a constant column, so the sidecar stays valid).

    Columns marked `signed` get mean 0 and their root mean square as std, so that x = 0 (no pressure either
    way) stays z = 0, where a symmetric model says 0.5."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    if signed is not None:
        mean = np.where(signed, 0.0, mean)
        std = np.where(signed, np.sqrt(np.mean(x * x, axis=0)), std)
    return mean, np.where(std > 1e-12, std, 1.0)


def row_weights(events: np.ndarray, how: str) -> np.ndarray:
    """Loss weight per row, mean 1: equal per row, or equal per label event (a run of hundreds of rows with
    one label is one observation of the next move, not hundreds)."""
    if how == "rows":
        return np.ones(len(events))
    if how != "events":
        raise ValueError(f"weighting expected 'rows' or 'events' found={how!r}")
    _, inv, counts = np.unique(events, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inv]
    return w / w.mean()


def fit(x: np.ndarray, y: np.ndarray, events: np.ndarray, cfg: Config, *, seed: int, steps: int,
        ) -> tuple[Any, np.ndarray, np.ndarray]:
    """Full-batch Adam on weighted mean binary cross-entropy + l2 * sum(W^2); returns (net, mean, std)."""
    import torch

    names = FEATURE_SETS[cfg.features]
    signed = np.array([f in SIGNED for f in names]) if cfg.symmetric else None
    mean, std = standardiser(x, signed)
    torch.manual_seed(seed)
    flip = np.where(signed, -1.0, 1.0) if signed is not None else None
    net = build_net(x.shape[1], ARCHS[cfg.arch], cfg.transform, flip)
    zt = torch.tensor((x - mean) / std, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    wt = torch.tensor(row_weights(events, cfg.weighting), dtype=torch.float32)
    weights = [p for n, p in net.named_parameters() if n.endswith("weight")]
    opt = torch.optim.Adam(net.parameters(), lr=0.03 if cfg.arch == "logreg" else 0.01)
    loss_fn = torch.nn.BCEWithLogitsLoss(weight=wt)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(net.logit(zt), yt) + cfg.l2 * sum((w * w).sum() for w in weights)
        loss.backward()
        opt.step()
    net.eval()
    return net, mean, std


def predict(net: Any, z: np.ndarray) -> np.ndarray:
    """P(up) per row of standardised inputs z."""
    import torch

    with torch.no_grad():
        return net(torch.tensor(z, dtype=torch.float32)).numpy()[:, 0].astype(np.float64)


# -- metrics ---------------------------------------------------------------------------------------------

def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """procs.metrics_ml.log_loss with this script's clip (1e-7, so recorded figures stay as they were)."""
    return mm.log_loss(p, y, eps=1e-7)


def cluster_bootstrap(correct: dict[str, np.ndarray], events: np.ndarray, *, n_boot: int, seed: int,
                      ) -> dict[str, np.ndarray]:
    """Bootstrap hit rates, resampling label events with replacement; returns (n_boot,) draws per name.

    Every name is resampled with the same events, so differences between names are paired."""
    _, inv = np.unique(events, return_inverse=True)
    n_ev = int(inv.max()) + 1
    rows_per = np.bincount(inv, minlength=n_ev).astype(np.float64)
    hits_per = {k: np.bincount(inv, weights=v.astype(np.float64), minlength=n_ev) for k, v in correct.items()}
    rng = np.random.default_rng(seed)
    draws = {k: np.empty(n_boot) for k in correct}
    for b in range(n_boot):
        # how often each event is drawn in this resample
        w = np.bincount(rng.integers(0, n_ev, n_ev), minlength=n_ev)
        tot = float(w @ rows_per)
        for k in correct:
            draws[k][b] = float(w @ hits_per[k]) / tot
    return draws


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """McNemar test with continuity correction on rows (a, b: correct per row); treats rows as independent."""
    n01 = int(np.sum(a & ~b))
    n10 = int(np.sum(~a & b))
    if n01 + n10 == 0:
        return {"a_only": 0, "b_only": 0, "chi2": 0.0, "p_value": 1.0}
    chi2 = (abs(n01 - n10) - 1) ** 2 / (n01 + n10)
    return {"a_only": n01, "b_only": n10, "chi2": round(chi2, 3), "p_value": float(math.erfc(math.sqrt(chi2 / 2)))}


def score_table(y: np.ndarray, preds: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], events: np.ndarray,
                *, n_boot: int, seed: int) -> dict[str, Any]:
    """Metrics of every predictor on the same rows: preds[name] = (predicted up?, P(up), ranking score)."""
    draws = cluster_bootstrap({k: v[0] == (y == 1) for k, v in preds.items()}, events, n_boot=n_boot, seed=seed)
    first = np.r_[True, events[1:] != events[:-1]]  # first row of each label event present
    out: dict[str, Any] = {"n_rows": len(y), "n_events": len(np.unique(events)), "up_fraction":
                           round(float(np.mean(y == 1)), 4), "bootstrap": {"unit": "label event", "draws": n_boot,
                                                                            "seed": seed}}
    for name, (up, p, s) in preds.items():
        correct = up == (y == 1)
        k = int(correct.sum())
        lo, hi = mm.wilson_interval(k, len(y))
        ev_k, ev_n = int(correct[first].sum()), int(first.sum())
        elo, ehi = mm.wilson_interval(ev_k, ev_n)
        out[name] = {
            "hit_rate": round(k / len(y), 4), "n": len(y), "correct": k,
            "ci95_event_bootstrap": [round(float(np.percentile(draws[name], 2.5)), 4),
                                     round(float(np.percentile(draws[name], 97.5)), 4)],
            "ci95_wilson_rows": [round(lo, 4), round(hi, 4)],
            "log_loss": round(log_loss(y, p), 4), "roc_auc": round(mm.roc_auc(s, y), 4),
            "first_row_of_event": {"hit_rate": round(ev_k / max(ev_n, 1), 4), "n": ev_n,
                                   "ci95_wilson": [round(elo, 4), round(ehi, 4)]},
        }
    if "model" in preds:
        mc = preds["model"][0] == (y == 1)
        for name in preds:
            if name == "model":
                continue
            d = draws["model"] - draws[name]
            diff = float(np.mean(mc) - np.mean(preds[name][0] == (y == 1)))
            # two-sided bootstrap p: how often the resampled difference falls on the other side of 0
            p_boot = min(1.0, 2 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
            out[f"model_vs_{name}"] = {
                "hit_rate_diff": round(diff, 4),
                "ci95_event_bootstrap": [round(float(np.percentile(d, 2.5)), 4),
                                         round(float(np.percentile(d, 97.5)), 4)],
                "p_value_event_bootstrap": round(p_boot, 4),
                "mcnemar_rows": mcnemar(mc, preds[name][0] == (y == 1)),
            }
    return out


def baselines(x_fit: np.ndarray, y_fit: np.ndarray, x: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray,
                                                                                        np.ndarray]]:
    """The two baselines on rows x, from the training rows (x_fit, y_fit) only.

    majority: the training majority class, P(up) = the training up rate. imbalance: up iff imbalance_1 > 0
    (the top level, the book's most direct pressure on the next move), ties the majority; P(up) is the
    training up rate of each side of 0, and imbalance_1 itself ranks the rows for the AUC."""
    prior = float(np.mean(y_fit))
    maj = prior > 0.5
    n = len(x)
    imb_fit = x_fit[:, FEATURE_INDEX["imbalance_1"]]
    imb = x[:, FEATURE_INDEX["imbalance_1"]]
    p_pos = float(np.mean(y_fit[imb_fit > 0])) if np.any(imb_fit > 0) else prior
    p_neg = float(np.mean(y_fit[imb_fit < 0])) if np.any(imb_fit < 0) else prior
    up_imb = np.where(imb > 0, True, np.where(imb < 0, False, maj))
    p_imb = np.where(imb > 0, p_pos, np.where(imb < 0, p_neg, prior))
    return {"majority": (np.full(n, maj), np.full(n, prior), np.zeros(n)),
            "imbalance": (up_imb, p_imb, imb)}


# -- export ---------------------------------------------------------------------------------------------

def export(net: Any, n_in: int, out: Path) -> None:
    """ONNX via the TorchScript exporter (works offline, no onnxscript), fixed opset, dynamic batch axis."""
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    # the TorchScript exporter has no rule for asinh although ONNX has the op (opset >= 9)
    torch.onnx.register_custom_op_symbolic("aten::asinh", lambda g, x: g.op("Asinh", x), 9)
    with warnings.catch_warnings():
        # torch >= 2.9 defaults to the dynamo exporter, which needs onnxscript; the legacy one warns
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(2, n_in),), str(out), dynamo=False, input_names=["z"],
                          output_names=["p"], dynamic_axes={"z": {0: "batch"}, "p": {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True)


def inference_module(net: Any) -> Any:
    """The trained net as ONNX Runtime should run it. At batch 1 it charges ~1.8 µs per run plus ~0.25 µs per
    node, and the traced logistic regression is 12 nodes (two MatMuls and Gathers for the symmetric logit,
    Unsqueeze, Sub and Concat for [p, 1 - p]). The same function in 3: [Asinh ->] Gemm -> Sigmoid, since the
    symmetric logit w·u − w·(flip ⊙ u) is the linear map w ⊙ (1 − flip), and P(down) = sigmoid(−logit)
    (1 − P(up) up to float32 rounding). An MLP is exported as it is."""
    import torch
    from torch import nn

    if len(net.body) != 1:
        return net
    lin = net.body[0]
    with torch.no_grad():
        w = lin.weight[0].clone()
        if net.symmetric:
            w = w * (1.0 - net.flip)  # a bias cancels in the difference (the layer has none)
        b = lin.bias[0].clone() if lin.bias is not None else torch.zeros(())
    w2 = torch.stack([w, -w], dim=1)  # (n_in, 2): logit and −logit
    b2 = torch.stack([b, -b])
    asinh = net.transform == "asinh"

    class DirectionInference(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("w", w2.float())
            self.register_buffer("b", b2.float())

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            u = torch.asinh(z) if asinh else z
            return torch.sigmoid(torch.addmm(self.b, u, self.w))

    return DirectionInference().eval()


def verify_export(net: Any, path: Path, z_real: np.ndarray, *, seed: int) -> dict[str, float]:
    """onnx.checker, then ONNX Runtime vs torch on random and on real (standardised) rows; max |diff| each."""
    import onnx
    import onnxruntime as ort
    import torch

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    # random rows: standard normal, plus a few far in the tails (|z| up to 50)
    z_rand = np.concatenate([rng.normal(size=(2000, z_real.shape[1])),
                             rng.normal(size=(200, z_real.shape[1])) * 20]).astype(np.float32)
    res = {}
    for name, z in (("random", z_rand), ("real", z_real.astype(np.float32))):
        got = sess.run(None, {"z": z})[0]
        with torch.no_grad():
            want = net(torch.tensor(z)).numpy()
        res[name] = float(np.max(np.abs(got - want)))
        res[f"{name}_rows"] = len(z)
    worst = max(res["random"], res["real"])
    if worst > PARITY_TOL:
        raise RuntimeError(f"exported graph differs from torch: max abs diff {worst:.3g} > {PARITY_TOL}")
    return res


# -- report ---------------------------------------------------------------------------------------------

TEST_HEADER = ("| predictor | hit rate | 95 % CI, Wilson | 95 % CI, event bootstrap | log loss | ROC-AUC |\n"
               "|---|---|---|---|---|---|")
COMPARE_HEADER = ("| comparison | hit-rate difference | 95 % CI (paired event bootstrap) | p (bootstrap) | "
                  "rows only the model / only the baseline got right (McNemar p) |\n|---|---|---|---|---|")
PREDICTORS: tuple[tuple[str, str], ...] = (("model", "model"), ("majority", "majority class (training labels)"),
                                           ("imbalance", "naive imbalance (up iff imbalance_1 > 0)"))


def _utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f} %"


def _num(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _test_rows(te: dict[str, Any], model_label: str) -> list[str]:
    rows = []
    for name, label in PREDICTORS:
        r = te[name]
        shown = model_label if name == "model" else label
        rows.append(f"| {shown} | {_pct(r['hit_rate'])} ({r['correct']}/{r['n']}) | "
                    f"{_pct(r['ci95_wilson_rows'][0])} – {_pct(r['ci95_wilson_rows'][1])} | "
                    f"{_pct(r['ci95_event_bootstrap'][0])} – {_pct(r['ci95_event_bootstrap'][1])} | "
                    f"{_num(r['log_loss'])} | {_num(r['roc_auc'])} |")
    return rows


def _compare_rows(te: dict[str, Any]) -> list[str]:
    out = []
    for name in ("majority", "imbalance"):
        c = te[f"model_vs_{name}"]
        mc = c["mcnemar_rows"]
        out.append(f"| model − {name} | {100 * c['hit_rate_diff']:+.1f} pp | "
                   f"{100 * c['ci95_event_bootstrap'][0]:+.1f} … {100 * c['ci95_event_bootstrap'][1]:+.1f} pp | "
                   f"{c['p_value_event_bootstrap']:.3f} | {mc['a_only']} / {mc['b_only']} (p = {mc['p_value']:.2g}) |")
    return out


def verdict(te: dict[str, Any], train_up_fraction: float) -> str:
    """The acceptance line: is the model's test hit rate strictly above both baselines', and by how much."""
    m = te["model"]["hit_rate"]
    short = {b: te[b]["hit_rate"] - m for b in ("majority", "imbalance") if m <= te[b]["hit_rate"]}
    if not short:
        sig = all(te[f"model_vs_{b}"]["ci95_event_bootstrap"][0] > 0 for b in ("majority", "imbalance"))
        return ("**met**: the model's hit rate is above both baselines" + (
            ", and the paired interval of each difference excludes 0." if sig else
            "; but the paired interval of a difference includes 0, so the margin is not established."))
    parts = [f"{'ties' if abs(d) < 1e-12 else f'is {100 * d:.1f} pp below'} the {b} baseline "
             f"({_pct(te[b]['hit_rate'])})" for b, d in short.items()]
    text = f"**not met**: the model's hit rate {_pct(m)} " + " and ".join(parts) + "."
    mc = te["model_vs_imbalance"]["mcnemar_rows"]
    if "imbalance" in short and mc["a_only"] + mc["b_only"] == 0:
        text += (" It predicts the same side as the imbalance rule on every test row: what it learnt is that rule "
                 "(its probabilities differ, hence a different log loss and AUC).")
    if "majority" in short:
        text += (f" The training labels are {_pct(train_up_fraction)} up; the test tail is {_pct(te['up_fraction'])}"
                 " up, and the majority class scores what the tail's drift gives it.")
    return text


def _others_table(others: list[dict[str, Any]]) -> str:
    lines = ["| capture | symbols | training rows (up) | test n | predictor | hit rate | 95 % CI, Wilson | log loss | "
             "ROC-AUC |", "|---|---|---|---|---|---|---|---|---|"]
    for o in others:
        if "test" not in o:
            lines.append(f"| `{o['capture']}` | {', '.join(o['symbols'])} | {o['split']['train_rows']} | "
                         f"{o['split']['test_rows']} | {o.get('error', '')} | | | | |")
            continue
        for name, label in PREDICTORS:
            r = o["test"][name]
            head = (f"| `{o['capture']}` | {', '.join(o['symbols'])} | {o['split']['train_rows']} "
                    f"({_pct(o['train_up_fraction'])}) | {o['test']['n_rows']} " if name == "model" else "| | | | ")
            lines.append(f"{head}| {label} | {_pct(r['hit_rate'])} ({r['correct']}/{r['n']}) | "
                         f"{_pct(r['ci95_wilson_rows'][0])} – {_pct(r['ci95_wilson_rows'][1])} | "
                         f"{_num(r['log_loss'])} | {_num(r['roc_auc'])} |")
    return "\n".join(lines)


def model_card(side: dict[str, Any]) -> str:
    """models/direction.md from the sidecar, so the card and the shipped numbers cannot disagree."""
    m = side["metrics"]
    tr = side["trained_on"]
    sp = m["split"]
    te = m["test"]
    ta = m["test_all_rows"]
    ch = m["chosen"]
    sample = side.get("sample", "all")
    val = []
    shown = m["validation"][:10]
    for arch in ARCHS:  # the best of each architecture, also when it is not in the top 10
        best_arch = next((r for r in m["validation"] if r["arch"] == arch), None)
        if best_arch is not None and best_arch not in shown:
            shown.append(best_arch)
    for r in shown:
        mark = " **chosen**" if r["config"] == ch["name"] else ""
        val.append(f"| {m['validation'].index(r) + 1} | {r['config']}{mark} | {_pct(r['hit_rate'])} | "
                   f"{' / '.join(_pct(h) for h in r['hit_rate_per_fold'])} | {_num(r['log_loss'])} | "
                   f"{_num(r['roc_auc'])} |")
    vb = m["validation_baselines"]
    n_val = sum(f["val_rows"] for f in sp["folds"])
    beat_val = [r["config"] for r in m["validation"] if r["hit_rate"] > vb["imbalance"]]
    maj_side = "up" if tr["train_up_fraction"] > 0.5 else "down"
    tie = abs(tr["train_up_fraction"] - 0.5) < 1e-12
    # an exactly balanced training span makes the majority class arbitrary: say what the other side scores
    tie_note = (f"by the tie rule, up only when more than half are up; the training span is exactly balanced, "
                f"and the other side would score {_pct(1 - te['majority']['hit_rate'])} on the tail" if tie else "")
    par = m["onnx_parity"]
    block_s = (sp["train_end_ms"] - sp["start_ms"]) / sp["n_blocks"] / 1000
    feats = ", ".join(f"`{f}`" for f in side["features"])
    sampling = {"change": "one row per mid change: the book update that moved the mid (the first row of each run "
                          "of constant mid)", "all": "every book update"}.get(sample, f"the newest row every {sample}")
    others = m.get("other_captures", [])
    return f"""# models/direction.md — the direction model

`direction.onnx` + `direction.json`: P(up) for the newest feature vector of a symbol, where "up" means
{side['output_meaning']['p_up'].removeprefix('P(up): probability that ')} The inference stage loads it
beside the anomaly model (`inference.direction_model`, default `models/direction.onnx`) and writes
column 0 (`p_up`) into SCORE_UP; column 1 is `p_down` = 1 − `p_up`. Predicts up when `p_up` >
{side['threshold']} (the sidecar's `threshold`). Horizon: `horizon_ms` = {side['horizon_ms']}
({'event time: the next mid change, not a clock horizon' if side['horizon_ms'] == 0 else 'exchange time'}).

**Read the caveats first: this is trained and tested on 2 minutes of one market on one day.**

## Result on the held-out tail ({sample} sampling: {sp['test_rows']} test rows = {sp['test_events']} label events)

{TEST_HEADER}
{chr(10).join(_test_rows(te, f"model ({ch['name']})"))}

{COMPARE_HEADER}
{chr(10).join(_compare_rows(te))}

Acceptance (hit rate above both baselines on the held-out tail): {verdict(te, tr['train_up_fraction'])}
With {te['n_rows']} test events a Wilson interval is about ±{50 * (te['model']['ci95_wilson_rows'][1] -
te['model']['ci95_wilson_rows'][0]):.0f} pp: no difference of a few points between these
predictors can be established on this capture.

- The majority class comes from the training labels ({_pct(tr['train_up_fraction'])} up → {maj_side}
  {tie_note}), never from the test tail. Its log loss uses the training up rate as P(up); its ROC-AUC
  is 0.5 by construction.
- The naive imbalance baseline predicts up iff `imbalance_1` > 0 (0: the majority class); its P(up) is the
  training up rate on each side of 0, and `imbalance_1` itself ranks the rows for its AUC.
- For scale: an earlier system in this line reached 51.7 % directional accuracy.

## Why the per-update figures looked different (every update of the same tail)

The previous version of this card scored every book update ({ta['n_rows']} rows of the same tail). Those
rows fall into only {ta['n_events']} label events: with horizon 0 every update between two mid changes has the
same label, and one quiet stretch spans up to hundreds of updates. So the per-update hit rate is a
time-weighted average dominated by a few long stretches, and its Wilson interval (treating
{ta['n_rows']} rows as independent) is far too narrow; the event bootstrap is the honest one there.
{_pct(ta['up_fraction'])} of the tail's updates are followed by an up move, but {_pct(te['up_fraction'])} of its
mid changes are: the long stretches before a down move inflate "down" by rows, which is why the majority
class (down) reaches {_pct(ta['majority']['hit_rate'])} per update. The same model and baselines per update:

{TEST_HEADER}
{chr(10).join(_test_rows(ta, 'model'))}

## Data

- Capture: `{tr['capture']}` (sha256 `{tr['capture_sha256'][:16]}…`), Binance USD-M futures
  {', '.join(tr['symbols'])}, read from `../shared/data/binance/` (not part of the repository).
  {tr['rows']} feature rows of a valid book after a {tr['warmup_s']:g} s warm-up, made by the book stage's own
  parser and kernel (`procs.datasets.from_capture`); {tr['label_events']} runs of constant mid.
- Label: `Dataset.direction({side['horizon_ms']})`: {'the sign of the next change of the mid, however far ahead'
  if side['horizon_ms'] == 0 else f"the sign of the mid {side['horizon_ms']} ms ahead"}; 1 up, 0 down; rows
  without a future move are skipped ({_pct(tr['skipped_fraction'])} of updates), not modelled as a class.
- Rows: `Dataset.sample("{sample}")`: {sampling}; {tr.get('sampled_rows', tr['rows'])} rows. Labels are
  computed on every update first. A row's membership depends only on it and earlier rows.
- Other captures are not pooled in (the sidecar has one mean and std per feature, and flows are in
  base units); each is scored separately below.

## Split (exchange time E)

| part | from | to | labelled rows | label events |
|---|---|---|---|---|
| training span | {_utc(sp['start_ms'])} | {_utc(sp['train_end_ms'])} | {sp['train_rows']} | {sp['train_events']} |
| embargo (dropped) | {_utc(sp['train_end_ms'])} | {_utc(sp['test_start_ms'])} | {sp['embargo_rows']} updates | |
| test tail | {_utc(sp['test_start_ms'])} | {_utc(sp['end_ms'])} | {sp['test_rows']} | {sp['test_events']} |

- Test = the last {_pct(sp['test_fraction'])} of the capture's time; embargo {sp['embargo_s']:g} s before it.
- Purge: training labels are computed on the training span alone, so a row whose next move comes after
  the training span's end has no training label ({sp['train_rows_purged']} rows dropped that way). No
  training label looks into the embargo or the test tail.
- Validation: the training span in {sp['n_blocks']} time blocks of {block_s:.0f} s; {sp['n_folds']} forward-chaining
  folds fit on the blocks before a block (minus the embargo, purged the same way) and validate on it
  ({' / '.join(str(f['val_rows']) for f in sp['folds'])} rows). Model choice is made there only; the test
  tail decided nothing.

## Features and graph

{feats}

- Standardised with the training span's mean and std (the sidecar's `mean`, `std`; signed features get
  mean 0 and their RMS in symmetric models; `procs/model.py` feeds z = (x − mean) / std to the graph).
- Graph: {side['architecture']}.
- Opset {side['onnx_opset']}, dynamic batch axis, torch {side['torch_version']}.

## Model choice (validation folds only)

{len(m['validation'])} candidates: {{logistic regression, MLP with one hidden layer of 16}} × feature sets
{{{', '.join(FEATURE_SETS)}}} × input {{z, asinh(z)}} × L2 {{1e-3, 1e-1}} ×
{{free, symmetric}}{'' if sample == 'change' else ' × {row, event} weighting'}. *Symmetric* models have no
bias and are odd in the signed features: mirroring the book swaps P(up) and P(down), so the drift of the training period
cannot be learnt as a bias.

The hit rate over all {n_val} validation rows decides (ties: log loss). The baselines on these rows:
majority {_pct(vb['majority'])}, naive imbalance {_pct(vb['imbalance'])}. Candidates above the imbalance rule on
validation: {len(beat_val)} of {len(m['validation'])}. The top 10 and the best of each architecture (all in the
sidecar's `metrics.validation`):

| rank | configuration | hit rate | per fold | log loss | ROC-AUC |
|---|---|---|---|---|---|
{chr(10).join(val)}

## Other captures (the chosen configuration refitted on each capture's own earlier part)

Same sampling, label and {_pct(sp['test_fraction'])} test tail; no model choice on them (the configuration
was fixed by the BTC validation folds); embargo scaled to 4 % of the span. Multi-symbol captures pool
their symbols' rows (labels per symbol).

{_others_table(others) if others else '(none given)'}

These are 30 s recordings: their test tails hold a handful of mid changes, and the intervals span most
of [0, 1]. They say nothing either way.

## Export checks

`onnx.checker.check_model(full_check=True)`; ONNX Runtime vs torch, max |Δ|: {par['random']:.2e} on
{par['random_rows']} random inputs, {par['real']:.2e} on {par['real_rows']} real (test) inputs; through
`procs.model.Model.score` on the raw test rows: {par['model_score_vs_torch']:.2e}.

## How it was trained

```
{tr['command']}
```

{tr['seconds']:.0f} s on {tr['machine']} (1 torch thread), seed {tr['seed']}. Full-batch Adam on binary cross-entropy
+ L2 on the weights, {tr['steps']} steps, no early stopping, `torch.use_deterministic_algorithms(True)`.
A re-run of the command must write the same `direction.onnx`: its sha256 is the sidecar's
`onnx_sha256` (`{side['onnx_sha256'][:16]}…`); `tests/test_train_direction.py` checks that two quick
runs write identical bytes.

## Caveats

- **2 minutes of one market (BTCUSDT perpetual) on one day (2024-08-08).** The test tail is about
  {(sp['end_ms'] - sp['test_start_ms']) / 1000:.0f} s with {te['n_events']} mid changes. Any figure here is a
  measurement of that half minute, not of the market.
- The model is trained on the updates that move the mid, and the inference stage applies it to every
  update: between mid changes it sees books it was not fitted on (the per-update table above shows how
  it does there).
- P(up) is conditional on the mid moving: it says nothing about when the next move comes, nor its size.
- The features are in BTCUSDT units where they are not scale-free. Retrain per market, on far more
  data, before trusting it.
"""


# -- main -----------------------------------------------------------------------------------------------

def _xy(ds: Dataset, y: np.ndarray, cols: list[int]) -> tuple[np.ndarray, np.ndarray]:
    m = y >= 0
    return ds.x[m][:, cols], y[m]


def select(ds: Dataset, split: Split, events: np.ndarray, configs: list[Config], *, seed: int, steps: int,
           ) -> list[dict[str, Any]]:
    """Every candidate on every validation fold; rows of the result sorted best first."""
    results = []
    for cfg in configs:
        cols = [FEATURE_INDEX[f] for f in FEATURE_SETS[cfg.features]]
        hits, ys, ps = [], [], []
        for y_fit, y_val, _, _ in split.folds:
            xf, yf = _xy(ds, y_fit, cols)
            xv, yv = _xy(ds, y_val, cols)
            net, mean, std = fit(xf, yf, events[y_fit >= 0], cfg, seed=seed, steps=steps)
            p = predict(net, (xv - mean) / std)
            hits.append(float(np.mean((p > 0.5) == (yv == 1))))
            ys.append(yv)
            ps.append(p)
        y_all, p_all = np.concatenate(ys), np.concatenate(ps)
        r = {"config": cfg.name, **asdict(cfg), "hit_rate": round(float(np.mean((p_all > 0.5) == (y_all == 1))), 4),
             "hit_rate_per_fold": [round(h, 4) for h in hits], "log_loss": round(log_loss(y_all, p_all), 4),
             "roc_auc": round(mm.roc_auc(p_all, y_all), 4)}
        log(f"  {cfg.name:48s} val hit {r['hit_rate']:.4f} {r['hit_rate_per_fold']} "
            f"log loss {r['log_loss']:.4f} AUC {r['roc_auc']:.4f}")
        results.append(r)
    results.sort(key=lambda r: (-r["hit_rate"], r["log_loss"]))
    return results


def validation_baselines(ds: Dataset, split: Split) -> dict[str, float]:
    """Pooled validation hit rate of the two baselines (each fold's from its own fit rows)."""
    hits: dict[str, list[np.ndarray]] = {"majority": [], "imbalance": []}
    for y_fit, y_val, _, _ in split.folds:
        xf, yf = _xy(ds, y_fit, list(range(len(FEATURE_NAMES))))
        xv, yv = _xy(ds, y_val, list(range(len(FEATURE_NAMES))))
        for k, (up, _, _) in baselines(xf, yf, xv).items():
            hits[k].append(up == (yv == 1))
    return {k: round(float(np.mean(np.concatenate(v))), 4) for k, v in hits.items()}


@dataclass
class Outcome:
    """One capture's split, fitted model and held-out figures."""

    split: Split
    summary: dict[str, Any]  # the split's times and row / event counts
    cols: list[int]
    net: Any
    mean: np.ndarray
    std: np.ndarray
    test: dict[str, Any]  # score_table on the sampled test rows
    test_all_rows: dict[str, Any]  # score_table on every labelled update of the test tail
    p_test: np.ndarray
    y_fit: np.ndarray


def split_summary(ds: Dataset, split: Split, events: np.ndarray, y_all: np.ndarray, args: argparse.Namespace,
                  sampled: np.ndarray, embargo_s: float) -> dict[str, Any]:
    e = ds.e_ms
    labelled_in_span = (y_all >= 0) & sampled & (e < split.train_end_ms)
    return {"start_ms": int(e.min()), "end_ms": int(e.max()), "train_end_ms": split.train_end_ms,
            "test_start_ms": split.test_start_ms, "test_fraction": args.test_fraction, "embargo_s": embargo_s,
            "sample": args.sample,
            "train_rows": int(split.train.sum()), "train_events": len(np.unique(events[split.train])),
            "train_rows_purged": int(np.sum(labelled_in_span & ~split.train)),
            "embargo_rows": int(np.sum((e >= split.train_end_ms) & (e < split.test_start_ms))),
            "test_rows": int(split.test.sum()), "test_events": len(np.unique(events[split.test])),
            "n_blocks": args.blocks, "n_folds": args.folds,
            "folds": [{"fit_end_ms": fe, "val_start_ms": vs, "fit_rows": int((yf >= 0).sum()),
                       "val_rows": int((yv >= 0).sum())} for yf, yv, fe, vs in split.folds]}


def fit_and_test(ds: Dataset, split: Split, events: np.ndarray, cfg: Config, y_all: np.ndarray, *, seed: int,
                 steps: int, n_boot: int, summary: dict[str, Any]) -> Outcome:
    """Fit `cfg` on the whole training span; score it and the baselines on the test tail, sampled and all rows."""
    cols = [FEATURE_INDEX[f] for f in FEATURE_SETS[cfg.features]]
    x_fit, y_fit = _xy(ds, split.y_train, cols)
    net, mean, std = fit(x_fit, y_fit, events[split.train], cfg, seed=seed, steps=steps)
    x_test_raw = ds.x[split.test]
    p_test = predict(net, (x_test_raw[:, cols] - mean) / std)
    base_fit = (ds.x[split.train], split.y_train[split.train])
    preds = {"model": (p_test > 0.5, p_test, p_test), **baselines(*base_fit, x_test_raw)}
    test = score_table(split.y_test[split.test], preds, events[split.test], n_boot=n_boot, seed=seed)
    # every labelled update of the tail (what the inference stage scores), same model and baseline fits
    tail = (ds.e_ms >= split.test_start_ms) & (y_all >= 0)
    p_all = predict(net, (ds.x[tail][:, cols] - mean) / std)
    preds_all = {"model": (p_all > 0.5, p_all, p_all), **baselines(*base_fit, ds.x[tail])}
    test_all = score_table(y_all[tail], preds_all, events[tail], n_boot=n_boot, seed=seed)
    return Outcome(split, summary, cols, net, mean, std, test, test_all, p_test, y_fit)


def _log_test(name: str, test: dict[str, Any]) -> None:
    for k in ("model", "majority", "imbalance"):
        r = test[k]
        log(f"  {name} {k:10s} hit {r['hit_rate']:.4f} (n={r['n']}, Wilson {r['ci95_wilson_rows']}, event "
            f"bootstrap {r['ci95_event_bootstrap']}) log loss {r['log_loss']:.4f} AUC {r['roc_auc']:.4f}")


def other_capture(path: Path, cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    """The chosen configuration refitted on another capture's training span and scored on its tail (no
    selection there). Short captures get a proportionally shorter embargo (at most --embargo-s)."""
    ds = from_capture(path)
    sampled = ds.sample(args.sample)
    span_s = (int(ds.e_ms.max()) - int(ds.e_ms.min())) / 1000
    embargo_s = min(args.embargo_s, round(0.04 * span_s, 1))
    split = make_split(ds, horizon_ms=args.horizon_ms, test_fraction=args.test_fraction, embargo_s=embargo_s,
                       n_blocks=args.blocks, n_folds=args.folds, sample=sampled)
    events = label_events(ds)
    y_all = ds.direction(args.horizon_ms)
    summary = split_summary(ds, split, events, y_all, args, sampled, embargo_s)
    log(f"{path.name}: {len(ds)} rows of {ds.symbols}; {summary['train_rows']} training rows, "
        f"{summary['test_rows']} test rows ({args.sample}), embargo {embargo_s:g} s")
    if split.train.sum() < 2:
        return mm.to_jsonable({"capture": path.name, "symbols": ds.symbols, "split": summary,
                               "error": "fewer than 2 labelled training rows"})
    oc = fit_and_test(ds, split, events, cfg, y_all, seed=args.seed, steps=args.steps, n_boot=args.bootstrap,
                      summary=summary)
    _log_test(f"{path.name[:12]} test", oc.test)
    return mm.to_jsonable({"capture": path.name, "capture_sha256": ds.meta["file_sha256"], "symbols": ds.symbols,
                           "rows": len(ds), "config": cfg.name, "train_up_fraction": float(np.mean(oc.y_fit)),
                           "split": summary, "test": oc.test, "test_all_rows": oc.test_all_rows})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--capture", default=str(DEFAULT_DATA_DIR / DEFAULT_CAPTURE), help="<ts_ns> <json> capture")
    ap.add_argument("--also", nargs="*", default=None, metavar="CAPTURE",
                    help="other captures to score the chosen configuration on (default: the other shared "
                         "captures that exist; no argument: none)")
    ap.add_argument("--horizon-ms", type=int, default=0, help="label horizon; 0: the next change of the mid")
    ap.add_argument("--sample", default="change",
                    help="rows used for training and test: change (one per mid change), all, or <N>ms")
    ap.add_argument("--test-fraction", type=float, default=0.3, help="last fraction of the capture's time: test")
    ap.add_argument("--embargo-s", type=float, default=5.0, help="gap between training span and test (and folds)")
    ap.add_argument("--blocks", type=int, default=5, help="time blocks of the training span")
    ap.add_argument("--folds", type=int, default=3, help="validation folds (the last blocks)")
    ap.add_argument("--grid", choices=("full", "quick"), default="full", help="candidates to compare")
    ap.add_argument("--steps", type=int, default=500, help="full-batch Adam steps per fit")
    ap.add_argument("--seed", type=int, default=0, help="torch and bootstrap seed")
    ap.add_argument("--bootstrap", type=int, default=2000, help="event-bootstrap resamples")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads (shared cores)")
    ap.add_argument("--out", default="models/direction.onnx",
                    help="ONNX path; the sidecar (.json) and model card (.md) go next to it")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.torch_threads)
    torch.use_deterministic_algorithms(True)
    t_start = time.perf_counter()
    capture = Path(args.capture)
    if not capture.is_file():
        ap.error(f"--capture {capture}: no such file (the shared captures live in ../shared/data/binance/)")
    also = ([capture.parent / c for c in OTHER_CAPTURES if (capture.parent / c).is_file() and c != capture.name]
            if args.also is None else [Path(c) for c in args.also])
    for c in also:
        if not c.is_file():
            ap.error(f"--also {c}: no such file")
    ds = from_capture(capture)
    try:
        sampled = ds.sample(args.sample)
    except ValueError as exc:
        ap.error(f"--sample: {exc}")
    if len(ds.symbols) != 1:
        log(f"note: {len(ds.symbols)} symbols; labels and events are per symbol, standardisation is pooled")
    split = make_split(ds, horizon_ms=args.horizon_ms, test_fraction=args.test_fraction, embargo_s=args.embargo_s,
                       n_blocks=args.blocks, n_folds=args.folds, sample=sampled)
    events = label_events(ds)
    y_all = ds.direction(args.horizon_ms)
    sp = split_summary(ds, split, events, y_all, args, sampled, args.embargo_s)
    log(f"{capture.name}: {len(ds)} rows ({int(sampled.sum())} sampled: {args.sample}); training span "
        f"{_utc(sp['start_ms'])} .. {_utc(sp['train_end_ms'])} ({sp['train_rows']} labelled rows, "
        f"{sp['train_events']} events, {sp['train_rows_purged']} purged), test {_utc(sp['test_start_ms'])} .. "
        f"{_utc(sp['end_ms'])} ({sp['test_rows']} rows, {sp['test_events']} events)")

    configs = grid(args.grid, args.sample)
    log(f"validation: {len(configs)} candidates x {args.folds} folds")
    val = select(ds, split, events, configs, seed=args.seed, steps=args.steps)
    val_base = validation_baselines(ds, split)
    log(f"  validation baselines: {val_base}")
    best = next(c for c in configs if c.name == val[0]["config"])
    log(f"chosen: {best.name}")

    oc = fit_and_test(ds, split, events, best, y_all, seed=args.seed, steps=args.steps, n_boot=args.bootstrap,
                      summary=sp)
    net, mean, std, cols, p_test, test = oc.net, oc.mean, oc.std, oc.cols, oc.p_test, oc.test
    feats = FEATURE_SETS[best.features]
    x_test_raw = ds.x[split.test]
    z_test = (x_test_raw[:, cols] - mean) / std
    _log_test("test", test)
    _log_test("test, all rows", oc.test_all_rows)
    for k in ("majority", "imbalance"):
        log(f"  model vs {k}: {test[f'model_vs_{k}']}")
    others = [other_capture(c, best, args) for c in also]

    out = Path(args.out)
    export(inference_module(net), len(cols), out)
    parity = verify_export(net, out, z_test, seed=args.seed)  # against the trained net itself
    label = ("the next change of the mid (however far ahead)" if args.horizon_ms == 0 else
             f"the mid {args.horizon_ms} ms ahead (first update at or after E + {args.horizon_ms} ms) vs now")
    side: dict[str, Any] = {
        "kind": "direction",
        "features": feats,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "outputs": OUTPUTS,
        "output_meaning": {"p_up": f"P(up): probability that {label} is up rather than down, given the book "
                                   "at this update; in [0, 1]. Conditional on the mid moving at all.",
                           "p_down": "1 - p_up"},
        "threshold": 0.5,
        "horizon_ms": args.horizon_ms,
        # rows the model was trained and tested on (procs.datasets.Dataset.sample); it is applied to every update
        "sample": args.sample,
        "version": f"{best.arch}-{best.features}-{best.transform}-{args.sample}-btcusdt-20240808-v2",
        "architecture": _architecture(best, len(cols)),
        # the loader (procs/model.py) checks the layout as a list of names or its own hash form
        "feature_layout": list(FEATURE_NAMES),
        "dataset_feature_layout": FEATURE_LAYOUT,
        "training_data_sha256": ds.take(split.train).sha256(),
        "torch_version": torch.__version__,
        "onnx_opset": OPSET,
        "onnx_parity_max_abs_diff": max(parity["random"], parity["real"]),
        "trained_on": {},
        "metrics": {"chosen": {"name": best.name, **asdict(best)}, "selection": "hit rate over all validation "
                    "rows of the folds, ties by their log loss", "split": sp, "validation": val,
                    "validation_baselines": val_base, "test": test,
                    "test_all_rows": mm.to_jsonable(oc.test_all_rows), "other_captures": others,
                    "onnx_parity": parity},
    }
    out.with_suffix(".json").write_text(json.dumps(side, indent=2) + "\n")
    # through the runtime loader: the sidecar must validate, and Model.score (float64 standardise -> float32)
    # must agree with torch on the raw rows
    from procs.model import Model

    model = Model.load(out, kind="direction")
    got = model.score(x_test_raw)[:, 0]
    parity["model_score_vs_torch"] = float(np.max(np.abs(got - p_test)))
    if parity["model_score_vs_torch"] > PARITY_TOL:
        raise RuntimeError(f"Model.score differs from torch by {parity['model_score_vs_torch']:.3g}")
    seconds = time.perf_counter() - t_start
    # a re-run must reproduce this hash (deterministic training and export)
    side["onnx_sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    side["trained_on"] = {
        "capture": capture.name, "capture_sha256": ds.meta["file_sha256"], "dataset_sha256": ds.sha256(),
        "symbols": ds.symbols, "rows": len(ds), "sampled_rows": int(sampled.sum()), "sample": args.sample,
        "warmup_s": ds.meta["warmup_s"],
        "label_events": int(events.max()) + 1, "skipped_fraction": round(float(np.mean(y_all < 0)), 4),
        "train_up_fraction": round(float(np.mean(oc.y_fit)), 4),
        "seed": args.seed, "steps": args.steps, "grid": args.grid, "seconds": round(seconds, 1),
        "machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
        "command": " ".join(["python scripts/train_direction.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    out.with_suffix(".json").write_text(json.dumps(side, indent=2) + "\n")
    out.with_suffix(".md").write_text(model_card(side))
    log(f"wrote {out} ({out.stat().st_size} bytes, sha256 {side['onnx_sha256'][:16]}, parity {parity}), "
        f"{out.with_suffix('.json')} and {out.with_suffix('.md')} in {seconds:.0f} s")
    return 0


def _architecture(cfg: Config, n_in: int) -> str:
    layers, k = [], n_in
    for h in ARCHS[cfg.arch]:
        layers.append(f"Linear({k},{h}) -> ReLU")
        k = h
    layers.append(f"Linear({k},1) -> sigmoid = p_up")
    pre = "asinh -> " if cfg.transform == "asinh" else ""
    name = "logistic regression" if not ARCHS[cfg.arch] else "MLP"
    graph = ("; exported as " + ("Asinh -> " if pre else "") + "Gemm [logit, -logit] -> Sigmoid = [p_up, p_down]"
             if not ARCHS[cfg.arch] else "")
    return (f"{name}: graph input z = (x - mean) / std (applied by procs/model.py) -> {pre}{' -> '.join(layers)}; "
            f"outputs [p_up, 1 - p_up]{graph}")


if __name__ == "__main__":
    raise SystemExit(main())
