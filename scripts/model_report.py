#!/usr/bin/env python
"""Write the models' report: metrics tables, ROC curves, score histograms, and what the anomaly flag does
to the strategy.

  anomaly    the anomaly model on held-out simulator seeds (default: the sidecar's test seed(s), else 7,
             never one of its training seeds): scripts/evaluate.py's metrics, roc_anomaly.png (overall and
             per kind) and scores_anomaly.png (column 0 of normal vs anomalous rows, threshold marked).
  direction  the direction model on the held-out tail of the shared BTCUSDT capture: --tail if given, else
             the test split its sidecar records (metrics.split.test_start_ms, when trained on this capture),
             else trained_on.test_fraction, else the last 20 % of the exchange time. When the model or the
             shared data folder is missing, the report says which, and the two figures say so too.
  strategy   the simulator through the real parser, book kernel, anomaly model and the market maker on the
             strategy engine (procs/sandbox.py) in one process, kill switch on with the flags and off: quotes
             placed (new + replace orders) inside labelled anomaly windows and outside, per kind, and the
             suppression ratio 1 - placed with the flag / placed without.

Files in --out: report.md, report.json (every number in report.md), roc_anomaly.png, scores_anomaly.png,
roc_direction.png, scores_direction.png. Deterministic given the models, seeds and seconds. The defaults
take about 40 s (two 20-minute simulations).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from procs import evaluation as ev  # noqa: E402
from procs import metrics_ml as mm  # noqa: E402
from procs.datasets import ANOMALY_KINDS  # noqa: E402
from procs.model import resolve_model_path  # noqa: E402

#: The shared capture the direction model is evaluated on.
DIRECTION_CAPTURE = "usdm_btcusdt_20240808_120s.lines.gz"
#: Held-out tail of the capture when the sidecar names none.
DEFAULT_TAIL = 0.2
#: Points kept per ROC curve in a figure (a curve has one per distinct score: up to one per row).
MAX_CURVE_POINTS = 2000
EPILOG = """examples:
  python scripts/model_report.py                                   # reports/models/, 1200 s per seed
  python scripts/model_report.py --seconds 120 --out /tmp/report   # a quick look
  python scripts/model_report.py --direction-model /tmp/d.onnx --tail 0.25

exit status: 0 written (sections that had to be skipped say why); 2 bad arguments or a broken model."""


def shared_data_dir() -> Path:
    """$TICKPIPE_DATA, else ../shared/data/binance next to the checkout (as the tests look for it)."""
    env = os.environ.get("TICKPIPE_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "binance"


def held_out_seeds(raw: dict[str, Any]) -> tuple[list[int], str]:
    """Seeds the anomaly model was not trained on: the sidecar's test seed(s), else 7, else the first free
    seed from 1000; with a sentence saying where they came from."""
    tr = raw.get("trained_on") if isinstance(raw.get("trained_on"), dict) else {}
    train = {int(s) for s in tr.get("train_seeds", []) if isinstance(s, int)}
    test = tr.get("test_seeds") or ([tr["test_seed"]] if isinstance(tr.get("test_seed"), int) else [])
    test = [int(s) for s in test if isinstance(s, int) and s not in train]
    if test:
        return test, f"the sidecar's held-out test seed(s) {test}"
    if 7 not in train:
        return [7], "seed 7 (the simulator's default; the sidecar names no test seed and did not train on 7)"
    free = next(s for s in range(1000, 10_000) if s not in train)
    return [free], f"seed {free} (the first not among the sidecar's train_seeds)"


def held_out_split(raw: dict[str, Any], capture: str, tail: float | None) -> tuple[float | None, int | None, str]:
    """(tail fraction, first exchange ms, a sentence) of the direction model's held-out rows: --tail when
    given; else the sidecar's recorded test start (metrics.split.test_start_ms, scripts/train_direction.py)
    when it was trained on this capture; else its trained_on.test_fraction; else DEFAULT_TAIL."""
    if tail is not None:
        return tail, None, f"the last {tail:.0%} of its exchange time (--tail)"
    tr = raw.get("trained_on") if isinstance(raw.get("trained_on"), dict) else {}
    start = ev.sidecar_test_start_ms(raw)
    if start is not None and tr.get("capture") == capture:
        return None, start, (f"exchange time >= {start} ms, the test tail the sidecar records "
                             "(metrics.split.test_start_ms)")
    for key in ("test_fraction", "holdout_fraction"):
        v = tr.get(key, ev.lookup(raw, ("metrics", "split", key)))
        if isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 1:
            return float(v), None, f"the last {v:.0%} of its exchange time (the sidecar's {key})"
    return DEFAULT_TAIL, None, (f"the last {DEFAULT_TAIL:.0%} of its exchange time (the default: the sidecar records "
                                "no test split for this capture)")


# -- figures -------------------------------------------------------------------------------------------

def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= MAX_CURVE_POINTS:
        return x, y
    idx = np.unique(np.r_[np.linspace(0, len(x) - 1, MAX_CURVE_POINTS).astype(int), len(x) - 1])
    return x[idx], y[idx]


def _roc_axes(title: str) -> tuple[Any, Any]:
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="chance (AUC 0.5)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def placeholder(path: Path, title: str, reason: str) -> None:
    """A figure that says why it is empty, so a link to it never shows a stale picture."""
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, "skipped:\n" + reason, ha="center", va="center", wrap=True, fontsize=10)
    _save(fig, path)


def plot_anomaly(result: ev.Evaluation, threshold: float, score_kind: str, out: Path) -> None:
    score, lab = result.score, result.label
    truth = lab > 0
    if truth.all() or not truth.any():
        why = f"the evaluated rows hold one class only ({int(truth.sum())} of {len(truth)} in labelled windows)"
        placeholder(out / "roc_anomaly.png", "Anomaly model ROC", why)
        placeholder(out / "scores_anomaly.png", "Anomaly score histogram", why)
        return
    fig, ax = _roc_axes("Anomaly model ROC (held-out simulator rows)")
    fpr, tpr, thr = mm.roc_curve(score, truth)
    ax.plot(*_thin(fpr, tpr), lw=2, color="black", label=f"any anomaly (AUC {mm.roc_auc(score, truth):.3f})")
    for i, kind in enumerate(ANOMALY_KINDS):
        sub = (lab == 0) | (lab == i + 1)
        t = lab[sub] == i + 1
        if t.any() and not t.all():
            f, r, _ = mm.roc_curve(score[sub], t)
            ax.plot(*_thin(f, r), lw=1.2, label=f"{kind} vs normal (AUC {mm.roc_auc(score[sub], t):.3f})")
    k = int(np.searchsorted(-thr, -threshold, side="left")) - 1  # the last point whose threshold > model's
    k = max(k, 0)
    ax.plot([fpr[k]], [tpr[k]], "o", color="red", label=f"alert threshold {threshold:.3g}")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, out / "roc_anomaly.png")

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    lo, hi = float(score.min()), float(score.max())
    if score_kind == "error" and lo > 0 and hi / lo > 100:
        bins = np.geomspace(lo, hi, 60)  # an unbounded error score: log bins
        ax.set_xscale("log")
    else:
        bins = np.linspace(min(lo, 0.0), max(hi, 1.0) if score_kind == "probability" else hi, 51)
    ax.hist(score[~truth], bins=bins, density=True, alpha=0.6, label=f"normal rows ({int((~truth).sum())})")
    ax.hist(score[truth], bins=bins, density=True, alpha=0.6, label=f"rows in labelled windows ({int(truth.sum())})")
    ax.axvline(threshold, color="red", ls="--", label=f"threshold {threshold:.3g}")
    ax.set(yscale="log", xlabel="column 0 (anomaly score)", ylabel="density (log)",
           title="Anomaly score: normal vs anomalous rows")
    ax.legend(fontsize=8)
    _save(fig, out / "scores_anomaly.png")


def plot_direction(result: ev.Evaluation, threshold: float, out: Path) -> None:
    p, y = result.score, result.label.astype(bool)
    if y.all() or not y.any():
        why = f"the evaluated rows hold one class only ({int(y.sum())} up of {len(y)})"
        placeholder(out / "roc_direction.png", "Direction model ROC", why)
        placeholder(out / "scores_direction.png", "Direction model P(up)", why)
        return
    fig, ax = _roc_axes("Direction model ROC (held-out tail)")
    f, r, _ = mm.roc_curve(p, y)
    ax.plot(*_thin(f, r), lw=2, color="black", label=f"model P(up) (AUC {mm.roc_auc(p, y):.3f})")
    imb = result.extra["imbalance_1"]
    f, r, _ = mm.roc_curve(imb, y)
    ax.plot(*_thin(f, r), lw=1.2, label=f"imbalance_1 baseline (AUC {mm.roc_auc(imb, y):.3f})")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, out / "roc_direction.png")

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    bins = np.linspace(0, 1, 51)
    ax.hist(p[y], bins=bins, density=True, alpha=0.6, label=f"mid went up ({int(y.sum())})")
    ax.hist(p[~y], bins=bins, density=True, alpha=0.6, label=f"mid went down ({int((~y).sum())})")
    ax.axvline(threshold, color="red", ls="--", label=f"threshold {threshold:g}")
    ax.set(xlabel="column 0: P(up)", ylabel="density", title="Direction model: P(up) by what the mid did")
    ax.legend(fontsize=8)
    _save(fig, out / "scores_direction.png")


# -- the report ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/model_report.py", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="reports/models", help="output folder (default reports/models/)")
    ap.add_argument("--anomaly-model", default="models/anomaly.onnx", help="default models/anomaly.onnx")
    ap.add_argument("--direction-model", default="models/direction.onnx",
                    help="default models/direction.onnx (skipped, saying so, while it does not exist)")
    ap.add_argument("--seeds", type=_seeds, default=None, metavar="A,B",
                    help="held-out simulator seeds for the anomaly model (default: see above)")
    ap.add_argument("--seconds", type=float, default=1200.0,
                    help="simulated seconds per seed (default 1200, as the shipped model's held-out test)")
    ap.add_argument("--strategy-seconds", type=float, default=None,
                    help="simulated seconds of the strategy run, on the first seed (default: --seconds)")
    ap.add_argument("--symbols", default=",".join(ev.DEFAULT_SYMBOLS), help="simulator symbols")
    ap.add_argument("--anomalies-per-min", type=float, default=2.0,
                    help="simulator: labelled anomalies injected per minute (default 2, as in training)")
    ap.add_argument("--data", type=Path, default=None,
                    help="folder of the shared Binance captures (default $TICKPIPE_DATA or ../shared/data/binance)")
    ap.add_argument("--capture", default=DIRECTION_CAPTURE, help=f"capture in --data (default {DIRECTION_CAPTURE})")
    ap.add_argument("--tail", type=float, default=None,
                    help="held-out fraction of the capture's time for the direction model (default: see above)")
    return ap


def _seeds(text: str) -> list[int]:
    try:
        v = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {text!r}") from None
    if not v:
        raise argparse.ArgumentTypeError(f"expected at least one seed, found {text!r}")
    return v


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.tail is not None and not 0 < a.tail <= 1:
        ap.error(f"--tail: expected a fraction in (0, 1], found {a.tail}")
    if a.seconds <= 0:
        ap.error(f"--seconds: expected > 0, found {a.seconds}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    symbols = [s for s in a.symbols.split(",") if s]
    t_start = time.perf_counter()
    cmd = "python scripts/model_report.py" + "".join(" " + shlex.quote(x) for x in (argv or sys.argv[1:]))
    md: list[str] = ["# Model report", "", f"Written by `{cmd}`. Every number is also in `report.json`.", ""]
    data: dict[str, Any] = {"command": cmd}

    # -- anomaly ------------------------------------------------------------------------------------
    try:
        model, raw = ev.load_model(a.anomaly_model)
    except (ValueError, FileNotFoundError) as e:
        print(f"model_report.py: error: --anomaly-model: {e}", file=sys.stderr)
        return 2
    seeds, why = (a.seeds, "--seeds") if a.seeds else held_out_seeds(raw)
    clash = ev.training_overlap(raw, sim_seeds=seeds)
    ev.log(f"model_report: [1/3] anomaly model {a.anomaly_model} on seeds {seeds}, {a.seconds:g} s each ...")
    rows = ev.load_rows(sim_seeds=seeds, seconds=a.seconds, symbols=symbols, anomalies_per_min=a.anomalies_per_min)
    anomaly = ev.evaluate_anomaly(model, rows, model_name=a.anomaly_model)
    plot_anomaly(anomaly, model.threshold, model.score_kind, out)
    data["anomaly"] = anomaly.metrics
    md += ["## Anomaly model", "",
           f"Held-out rows: simulator seeds {seeds} ({why}), {a.seconds:g} s each, {len(symbols)} symbols, "
           f"{a.anomalies_per_min:g} anomalies per minute."]
    md += [f"\n**Warning: {w}.**" for w in clash]
    md += ["", ev.format_metrics(anomaly.metrics), "",
           "Per kind, precision counts that kind's rows against the normal rows (alerts on other kinds' rows are "
           "left out), so a rare kind has a low precision even with few false alerts. The shipped sidecar's own "
           "per-kind table counts a row as predicted kind k when the alert fires and k is the largest kind "
           "column: the two are not the same figure.", "",
           "![ROC of the anomaly model](roc_anomaly.png) ![Anomaly score histogram](scores_anomaly.png)", ""]

    # -- direction ----------------------------------------------------------------------------------
    ev.log("model_report: [2/3] direction model ...")
    md += ["## Direction model", ""]
    data_dir = a.data or shared_data_dir()
    capture = data_dir / a.capture
    dmodel_file = resolve_model_path(a.direction_model)
    reason = None
    if not dmodel_file.is_file():
        reason = (f"no direction model at {a.direction_model} (scripts/train_direction.py writes "
                  "models/direction.onnx; pass --direction-model to evaluate another)")
    elif not data_dir.is_dir():
        reason = f"the shared data folder {data_dir} does not exist (set TICKPIPE_DATA or --data)"
    elif not capture.is_file():
        reason = f"the capture {capture} does not exist"
    if reason:
        ev.log(f"model_report: direction skipped: {reason}")
        md += [f"Skipped: {reason}.", ""]
        data["direction"] = {"skipped": reason}
        placeholder(out / "roc_direction.png", "Direction model ROC", reason)
        placeholder(out / "scores_direction.png", "Direction model P(up)", reason)
    else:
        try:
            dmodel, draw = ev.load_model(a.direction_model)
        except (ValueError, FileNotFoundError) as e:
            print(f"model_report.py: error: --direction-model: {e}", file=sys.stderr)
            return 2
        if dmodel.kind != "direction":
            print(f"model_report.py: error: --direction-model: {dmodel.path.with_suffix('.json')}: sidecar field "
                  f"'kind': expected 'direction', found {dmodel.kind!r}", file=sys.stderr)
            return 2
        tail, from_ms, split_why = held_out_split(draw, a.capture, a.tail)
        drows = ev.load_rows(captures=[capture])
        direction = ev.evaluate(dmodel, draw, drows, tail=tail, from_ms=from_ms, model_name=a.direction_model)
        plot_direction(direction, dmodel.threshold, out)
        data["direction"] = direction.metrics
        md += [f"Held-out rows of `{a.capture}`: {split_why}.", "",
               ev.format_metrics(direction.metrics), "",
               "![ROC of the direction model](roc_direction.png) ![P(up) histogram](scores_direction.png)", ""]

    # -- strategy -----------------------------------------------------------------------------------
    s_seconds = a.strategy_seconds or a.seconds
    ev.log(f"model_report: [3/3] strategy with and without the anomaly flag, seed {seeds[0]}, {s_seconds:g} s ...")
    effect = ev.strategy_effect(model, seed=seeds[0], seconds=s_seconds, symbols=symbols,
                                anomalies_per_min=a.anomalies_per_min)
    data["strategy_effect"] = effect
    md += ["## Effect of the anomaly flag on the strategy", "",
           "The simulator through the real parser, book kernel and anomaly model, and the built-in market maker "
           "on the strategy engine with its paper exchange (procs/sandbox.py), in one process: once with the "
           "model's flags and the kill switch on, once with the flags cleared (same scores, so the same spread "
           "widening). Each update is decided with the score of its own "
           "features (zero inference latency; the pipeline scores conflated, up to `inference.min_interval_us` "
           "later).", "", ev.format_strategy_effect(effect), "",
           "Without the flag the kill switch never acts: quotes move by replaces, and new ones follow fills. With "
           "the flag, the kill switch cancels both quotes and refuses new ones until the flag has been clear for "
           "risk.kill_hold_ms; the quotes then come back as new orders. Outside the windows, "
           "the suppression is the cost of false alerts: quoting time lost for nothing.", ""]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    files = ["report.md", "report.json", "roc_anomaly.png", "scores_anomaly.png", "roc_direction.png",
             "scores_direction.png"]
    print(f"model_report: wrote {', '.join(files)} to {out.resolve()}/ in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
