#!/usr/bin/env python
"""Score captures or simulator runs with a model and print its metrics, with the sample count.

The model's sidecar "kind" picks the metrics (no "kind": an anomaly model):

  direction  rows of the captures (or --sim-seeds), labelled up / down by the sign of the mid's next move
             over the sidecar's horizon_ms (0: the next change of the mid); rows whose mid does not move
             are left out and counted. Hit rate of "up iff P(up) > 0.5" with a Wilson 95 % interval (and
             a bootstrap over label events, rows being correlated), log loss, ROC-AUC, and baselines:
             majority (the majority class of the evaluated rows: an oracle, the best constant),
             training_majority (from the sidecar, when it records it), always_up, and imbalance
             (up iff imbalance_1 > 0).
  anomaly    needs labels: --sim-seeds (the simulator labels its anomaly windows), or a simulator capture
             with --labels FILE. Precision, recall, F1, ROC-AUC of the alert value (column 0, or its
             per-symbol EW time mean when the sidecar has a "history", as the inference stage alerts) at
             row level (overall and per kind), windows caught, and alert episodes (alerts of a symbol at
             most 500 ms apart: one strategy pause, as scripts/train_anomaly.py counts them) that overlap
             a window. A capture without labels has nothing to score against: it gets the alert rate and
             the score distribution, and says so.

Rows come from the real parser and book kernel (procs/datasets.py): one per update of a valid book,
the first seconds of each symbol dropped as warm-up (--warmup-s).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EPILOG = """examples:
  python scripts/evaluate.py --model models/anomaly.onnx --sim-seeds 7 --seconds 600
  python scripts/evaluate.py --model models/anomaly.onnx my_capture.lines.gz          # no labels: alert rate
  python -m procs.sources.simulator sim.lines.gz --seconds 300 --labels sim.labels.jsonl
  python scripts/evaluate.py --model models/anomaly.onnx sim.lines.gz --labels sim.labels.jsonl
  python scripts/evaluate.py --model models/direction.onnx \\
      ../shared/data/binance/usdm_btcusdt_20240808_120s.lines.gz --tail 0.2 --json direction.json

--json writes, for a direction model:
  {"model", "n", "hit_rate", "log_loss", "roc_auc", "baselines": {"majority", "imbalance", "always_up",
   "training_majority"}, plus "hit_rate_ci95" (Wilson, rows), "label_events", "hit_rate_ci95_event_bootstrap"
   (resampling label events: rows of one event share its label), "horizon_ms", "rows", "skipped_no_move",
   "up_fraction", "baseline_detail", "kind", "version", "source", "tail", "from_ms", "threshold", "warnings"}
for an anomaly model with labels:
  {"model", "n", "precision", "recall", "roc_auc", plus "f1", "average_precision", "positives", "alerts",
   "alert_rate", "threshold", "confusion", "per_kind", "windows", "episodes", "episodes_with_grace",
   "score_quantiles", "labels": true, "kind", "warnings", ...}
and without labels: precision, recall, roc_auc null, "labels": false, "alert_rate", "score_quantiles",
"histogram", "note". Undefined metrics (e.g. precision with no alert) are null.

exit status: 0 done; 2 bad arguments, model, sidecar or capture (the message names the field)."""


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected at least one seed, found {text!r}")
    return seeds


def fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], found {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], found {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/evaluate.py", description=__doc__,
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("captures", nargs="*", metavar="CAPTURE",
                    help="<ts_ns> <json> capture files (gzip or plain), e.g. from scripts/record.py")
    ap.add_argument("--model", default="models/anomaly.onnx",
                    help="ONNX model with its sidecar JSON next to it (default: models/anomaly.onnx)")
    ap.add_argument("--sim-seeds", type=parse_seeds, metavar="A,B",
                    help="evaluate on the built-in simulator instead, one run per seed (labelled anomalies)")
    ap.add_argument("--seconds", type=float, default=600.0, help="simulated seconds per seed (default 600)")
    ap.add_argument("--symbols", default="BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT", help="simulator symbols")
    ap.add_argument("--anomalies-per-min", type=float, default=2.0,
                    help="simulator: labelled anomalies injected per minute (default 2)")
    ap.add_argument("--labels", nargs="+", metavar="FILE", default=[],
                    help="anomaly windows (JSON lines, as the simulator writes them), one file per capture")
    ap.add_argument("--tail", type=fraction, metavar="F",
                    help="evaluate only the last fraction F of each capture's / run's exchange time (a held-out "
                         "tail, split as scripts/train_direction.py does)")
    ap.add_argument("--from-ms", type=int, metavar="E",
                    help="evaluate only rows with exchange time >= E ms (e.g. a direction sidecar's "
                         "metrics.split.test_start_ms)")
    ap.add_argument("--horizon-ms", type=int, default=None,
                    help="direction label horizon (default: the sidecar's horizon_ms, else 0 = next mid change)")
    ap.add_argument("--warmup-s", type=float, default=None,
                    help="seconds dropped at the start of each symbol (default: simulator 10, capture 5)")
    ap.add_argument("--json", metavar="PATH", help="also write the metrics as JSON here")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if bool(a.captures) == bool(a.sim_seeds):
        ap.error("give CAPTURE files or --sim-seeds (one of the two)")
    if a.labels and not a.captures:
        ap.error("--labels labels captures; simulator runs are labelled already")
    if a.horizon_ms is not None and a.horizon_ms < 0:
        ap.error(f"--horizon-ms: expected >= 0, found {a.horizon_ms}")
    from procs import evaluation as ev
    from procs.model import resolve_model_path

    if a.json and Path(a.json).resolve() == resolve_model_path(a.model).with_suffix(".json").resolve():
        ap.error(f"--json {a.json}: that is the model's sidecar; write the metrics elsewhere")

    try:
        model, raw = ev.load_model(a.model)
        if not a.quiet:
            ev.log(f"evaluate: {model!r}")
        warnings = ev.training_overlap(raw, captures=a.captures, sim_seeds=a.sim_seeds or [],
                                       restricted=a.tail is not None or a.from_ms is not None)
        for w in warnings:
            ev.log(f"evaluate: WARNING: {w}")
        datasets = ev.load_rows(captures=a.captures, labels=a.labels, sim_seeds=a.sim_seeds or [],
                                seconds=a.seconds, symbols=[s for s in a.symbols.split(",") if s],
                                anomalies_per_min=a.anomalies_per_min, warmup_s=a.warmup_s, progress=not a.quiet)
        result = ev.evaluate(model, raw, datasets, tail=a.tail, from_ms=a.from_ms, horizon_ms=a.horizon_ms,
                             model_name=a.model)
    except (ValueError, FileNotFoundError) as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    result.metrics["warnings"] = warnings
    print(ev.format_metrics(result.metrics))
    for w in warnings:
        print(f"\nWARNING: {w}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result.metrics, indent=2) + "\n")
        if not a.quiet:
            ev.log(f"evaluate: metrics written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
