"""Model metrics in plain numpy: ROC-AUC and ROC curve (rank-based, ties counted half), precision /
recall / F1, log loss, hit rate with its Wilson interval (and a cluster bootstrap for correlated rows),
average precision, and the window-level
metrics of the anomaly model (labelled windows caught, alert episodes that overlap a window).

Importable without numba or onnxruntime, so training scripts can reuse it. scikit-learn is not a
dependency of this project; these functions are tested against hand-computed values
(tests/test_evaluation.py).

Undefined values are NaN, never a silent 0: precision with no predicted positive, recall with no actual
positive, ROC-AUC with only one class present. `to_jsonable` turns NaN into null for JSON.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: z of a two-sided 95 % interval.
Z95 = 1.959963984540054


def _as_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels: expected the same length, found {s.shape[0]} and {y.shape[0]}")
    if np.isnan(s).any():
        raise ValueError(f"scores: expected finite numbers, found {int(np.isnan(s).sum())} NaN")
    yb = y.astype(bool)
    if y.dtype != bool and not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels: expected 0/1 or bool, found values {np.unique(y)[:5].tolist()}")
    return s, yb


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, tied values sharing the mean of their ranks (as in the Mann-Whitney U test)."""
    x = np.asarray(x, np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # start of each run of equal values, and its length
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    lengths = np.diff(np.r_[starts, len(xs)])
    mean_rank = starts + (lengths + 1) / 2.0  # ranks starts+1 .. starts+length, averaged
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(mean_rank, lengths)
    return ranks


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties
    counting 1/2 (rank-based, O(n log n)). NaN when the labels hold only one class."""
    s, y = _as_scores_labels(scores, labels)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = average_ranks(s)
    u = r[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): one point per distinct score, predicting positive when score >= threshold,
    from (0, 0) (threshold +inf) to (1, 1). The trapezoid area under it equals `roc_auc` (a run of ties
    is one diagonal step, worth 1/2 per tied pair). Raises when a class is absent (no curve)."""
    s, y = _as_scores_labels(scores, labels)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_curve: expected both classes in labels, found {n_pos} positive and {n_neg} negative")
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], y[order]
    last = np.r_[ss[1:] != ss[:-1], True]  # last row of each run of equal scores: one point per threshold
    tp = np.cumsum(yy)[last]
    fp = np.cumsum(~yy)[last]
    return (np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos], np.r_[np.inf, ss[last]])


def curve_area(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoid area under a curve given by points in x order."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def average_precision(scores: Any, labels: Any) -> float:
    """Mean of the precision at each positive's rank (rows ranked by score, best first; ties in order of
    appearance). NaN without positives."""
    s, y = _as_scores_labels(scores, labels)
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="stable")
    t = y[order]
    prec = np.cumsum(t) / np.arange(1, len(t) + 1)
    return float(prec[t].mean())


def confusion(pred: Any, truth: Any) -> dict[str, int]:
    """tp, fp, fn, tn of two boolean arrays."""
    p = np.asarray(pred, bool).ravel()
    t = np.asarray(truth, bool).ravel()
    if p.shape != t.shape:
        raise ValueError(f"pred and truth: expected the same length, found {p.shape[0]} and {t.shape[0]}")
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": len(p) - tp - fp - fn}


def precision_recall_f1(pred: Any, truth: Any) -> dict[str, float | int]:
    """precision = tp / (tp + fp) (NaN when nothing is predicted positive), recall = tp / (tp + fn) (NaN
    when nothing is positive), F1 = 2 tp / (2 tp + fp + fn) (NaN only when both are empty: with positives
    and no prediction it is 0). Also returns the counts."""
    c = confusion(pred, truth)
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    return {
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
        **c,
    }


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n (default 95 %); (NaN, NaN) when n = 0. Unlike the
    normal approximation it stays inside [0, 1] and is sensible at k = 0 or k = n."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval: expected 0 <= k <= n, found k={k} n={n}")
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # at k = 0 (k = n) the bound is exactly 0 (1); rounding would leave it a hair off
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def hit_rate(pred: Any, truth: Any, z: float = Z95) -> dict[str, float | int]:
    """Share of rows where pred == truth, with its Wilson interval: {hit_rate, ci_low, ci_high, hits, n}."""
    p = np.asarray(pred).ravel()
    t = np.asarray(truth).ravel()
    if p.shape != t.shape:
        raise ValueError(f"pred and truth: expected the same length, found {p.shape[0]} and {t.shape[0]}")
    n = len(p)
    k = int(np.count_nonzero(p == t))
    lo, hi = wilson_interval(k, n, z)
    return {"hit_rate": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi, "hits": k, "n": n}


def cluster_bootstrap_ci(values: Any, clusters: Any, n_boot: int = 1000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of `values` when rows come in correlated clusters (e.g. the rows of
    one label event share their label): resample whole clusters with replacement, `n_boot` times, with a
    fixed seed (deterministic). (NaN, NaN) on no rows."""
    v = np.asarray(values, np.float64).ravel()
    c = np.asarray(clusters).ravel()
    if v.shape != c.shape:
        raise ValueError(f"values and clusters: expected the same length, found {v.shape[0]} and {c.shape[0]}")
    if len(v) == 0:
        return float("nan"), float("nan")
    _, ids = np.unique(c, return_inverse=True)
    sums = np.bincount(ids, weights=v)
    counts = np.bincount(ids).astype(np.float64)
    k = len(sums)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for i in range(n_boot):
        w = np.bincount(rng.integers(0, k, k), minlength=k)  # how often each cluster is drawn
        means[i] = (w @ sums) / (w @ counts)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def log_loss(p_pos: Any, labels: Any, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood (natural log) of 0/1 labels under P(label = 1) = p_pos, with p clipped
    to [eps, 1 - eps] so that a confident miss costs -log(eps) instead of infinity. NaN on no rows."""
    p, y = _as_scores_labels(p_pos, labels)
    if len(p) == 0:
        return float("nan")
    if (p < 0).any() or (p > 1).any():
        raise ValueError(f"log_loss: p_pos expected in [0, 1], found range [{p.min():.4g}, {p.max():.4g}]")
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def runs(mask: Any) -> list[tuple[int, int]]:
    """Maximal runs of True in a 1-d boolean array, as half-open (start, stop) index pairs."""
    m = np.asarray(mask, bool).ravel().astype(np.int8)
    edges = np.diff(np.r_[0, m, 0])
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def _windows_of(windows: Iterable[Mapping[str, Any]], symbols: Sequence[str]) -> list[tuple[int, int, int, str]]:
    """(symbol id, start_E_ms, end_E_ms, kind) of the windows whose symbol is in `symbols`."""
    upper = [s.upper() for s in symbols]
    out = []
    for w in windows:
        name = str(w["symbol"]).upper()
        if name in upper:
            out.append((upper.index(name), int(w["start_E_ms"]), int(w["end_E_ms"]), str(w["kind"])))
    return out


def window_recall(alert: Any, symbol: Any, e_ms: Any, windows: Iterable[Mapping[str, Any]],
                  symbols: Sequence[str], kinds: Sequence[str]) -> dict[str, Any]:
    """Windows caught: a labelled window (start_E_ms <= E <= end_E_ms on its symbol) is caught when at
    least one of its rows alerts; the delay is the first alert's E - start_E_ms. Windows with no row at all
    (in a warm-up, past the end) are not counted. Per kind and overall:
    {windows, caught, recall, median_delay_ms}."""
    a = np.asarray(alert, bool)
    sym = np.asarray(symbol)
    e = np.asarray(e_ms)
    per: dict[str, dict[str, Any]] = {k: {"windows": 0, "caught": 0, "delays": []} for k in kinds}
    for sid, start, end, kind in _windows_of(windows, symbols):
        m = (sym == sid) & (e >= start) & (e <= end)
        if not m.any() or kind not in per:
            continue
        d = per[kind]
        d["windows"] += 1
        hit = a & m
        if hit.any():
            d["caught"] += 1
            d["delays"].append(float(e[np.argmax(hit)] - start))
    out: dict[str, Any] = {}
    all_delays: list[float] = []
    for k, d in per.items():
        all_delays += d["delays"]
        out[k] = {"windows": d["windows"], "caught": d["caught"],
                  "recall": d["caught"] / d["windows"] if d["windows"] else float("nan"),
                  "median_delay_ms": float(np.median(d["delays"])) if d["delays"] else float("nan")}
    total = sum(d["windows"] for d in out.values())
    caught = sum(d["caught"] for d in out.values())
    out["all"] = {"windows": total, "caught": caught, "recall": caught / total if total else float("nan"),
                  "median_delay_ms": float(np.median(all_delays)) if all_delays else float("nan")}
    return out


#: Alerts of one symbol at most this far apart (exchange ms) are one episode: the strategy's default
#: pause_hold_ms, so one episode is one pause. The one definition of an episode, used by
#: scripts/train_anomaly.py, procs/evaluation.py and so scripts/evaluate.py and scripts/model_report.py.
EPISODE_GAP_MS = 500


def merge_episodes(alert: Any, e_ms: Any, gap_ms: int = EPISODE_GAP_MS) -> tuple[np.ndarray, np.ndarray]:
    """(first E, last E) of the alert episodes of one symbol's rows (in time order): alerting rows at most
    gap_ms apart are one episode, whatever non-alerting rows lie between them."""
    t = np.asarray(e_ms)[np.asarray(alert, bool)]
    if not len(t):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cut = np.flatnonzero(np.diff(t) > gap_ms)
    return t[np.r_[0, cut + 1]], t[np.r_[cut, len(t) - 1]]


def alert_episodes(alert: Any, symbol: Any, e_ms: Any, windows: Iterable[Mapping[str, Any]],
                   symbols: Sequence[str], kinds: Sequence[str], grace_ms: int = 0,
                   gap_ms: int = EPISODE_GAP_MS) -> dict[str, Any]:
    """Alert episodes (`merge_episodes`: alerts of one symbol at most gap_ms apart). An episode overlaps a
    window of its symbol when [first E, last E] meets [start_E_ms, end_E_ms + grace_ms]; grace_ms > 0 also
    credits episodes that start just after a window (features over 10 s windows still remember it).
    Returns {episodes, overlapping, precision (the overlapping fraction), grace_ms, gap_ms,
    per_kind: {kind: episodes overlapping a window of that kind}}."""
    a = np.asarray(alert, bool)
    sym = np.asarray(symbol)
    e = np.asarray(e_ms)
    wins = _windows_of(windows, symbols)
    total = 0
    overlapping = 0
    per_kind = dict.fromkeys(kinds, 0)
    for sid in np.unique(sym):
        idx = np.flatnonzero(sym == sid)
        ws = [(s, t + grace_ms, k) for (w_sid, s, t, k) in wins if w_sid == sid]
        for first, last in zip(*merge_episodes(a[idx], e[idx], gap_ms), strict=True):
            total += 1
            hit = {k for (s, t, k) in ws if first <= t and last >= s}
            if hit:
                overlapping += 1
                for k in hit:
                    if k in per_kind:
                        per_kind[k] += 1
    return {"episodes": total, "overlapping": overlapping,
            "precision": overlapping / total if total else float("nan"), "grace_ms": grace_ms, "gap_ms": gap_ms,
            "per_kind": per_kind}


def quantiles(x: Any, qs: Sequence[float] = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)) -> dict[str, float]:
    """{'p50': ..., ...} of x (NaN for an empty x)."""
    v = np.asarray(x, np.float64).ravel()
    out = {}
    for q in qs:
        key = f"p{q * 100:g}".replace(".", "_")
        out[key] = float(np.quantile(v, q)) if len(v) else float("nan")
    return out


def to_jsonable(x: Any, digits: int = 6) -> Any:
    """x with numpy scalars and arrays made plain, floats rounded to `digits`, and NaN / inf as None."""
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v, digits) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_jsonable(v, digits) for v in x]
    if isinstance(x, np.ndarray):
        return [to_jsonable(v, digits) for v in x.tolist()]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        f = float(x)
        return round(f, digits) if math.isfinite(f) else None
    return x
