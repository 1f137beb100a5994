"""Model evaluation: procs/metrics_ml.py against hand-computed values, scripts/evaluate.py on the simulator,
a simulator capture and the shared BTCUSDT capture, the strategy-effect run, and scripts/model_report.py."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from procs import metrics_ml as mm
from procs.datasets import ANOMALY_KINDS, SIM_START_MS

ROOT = Path(__file__).resolve().parents[1]
ANOMALY_MODEL = ROOT / "models" / "anomaly.onnx"
BTC = "usdm_btcusdt_20240808_120s.lines.gz"
SYMBOLS = "BTCUSDT,ETHUSDT"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def evaluate_py() -> ModuleType:
    return _script("evaluate")


def export_direction_model(path: Path, weight: float = 5.0, **sidecar: object) -> Path:
    """A tiny direction model: P(up) = sigmoid(weight * imbalance_1), outputs [p_up, p_down]. Built with
    onnx.helper (no torch: fast), written to `path` (+ .json)."""
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1], [weight])
    b = helper.make_tensor("b", TensorProto.FLOAT, [1], [0.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["p"]),
             helper.make_node("Sub", ["one", "p"], ["q"]),
             helper.make_node("Concat", ["p", "q"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "direction_test",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
                              initializer=[w, b, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    meta = {"kind": "direction", "features": ["imbalance_1"], "mean": [0.0], "std": [1.0],
            "outputs": ["p_up", "p_down"], "threshold": 0.5, "horizon_ms": 0, "version": "test-logreg-imbalance",
            "trained_on": {"note": "made by tests/test_evaluation.py"}, "metrics": {}, **sidecar}
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


# -- metric functions vs hand-computed values ----------------------------------------------------------

def test_average_ranks_share_ties() -> None:
    assert mm.average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_roc_auc_hand_computed_with_and_without_ties() -> None:
    # 4 pairs (pos, neg): (0.35,0.1) 1, (0.35,0.4) 0, (0.8,0.1) 1, (0.8,0.4) 1 -> 3/4
    assert mm.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # pos {0.2, 0.6, 0.9}, neg {0.2, 0.6}: 0.5 + 0 + 1 + 0.5 + 1 + 1 = 4 of 6 pairs
    s, y = [0.2, 0.2, 0.6, 0.6, 0.9], [1, 0, 0, 1, 1]
    assert mm.roc_auc(s, y) == pytest.approx(4 / 6)
    assert mm.roc_auc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5  # all tied: chance
    assert mm.roc_auc([0.9, 0.1], [0, 1]) == 0.0  # perfectly wrong
    assert math.isnan(mm.roc_auc([0.1, 0.2], [1, 1]))  # one class: undefined
    # the trapezoid under roc_curve equals the rank formula, ties included
    fpr, tpr, _ = mm.roc_curve(s, y)
    assert mm.curve_area(fpr, tpr) == pytest.approx(4 / 6)
    rng = np.random.default_rng(1)
    s2 = rng.integers(0, 5, 300).astype(float)  # many ties
    y2 = rng.random(300) < 0.3 + 0.1 * s2
    f2, t2, _ = mm.roc_curve(s2, y2)
    assert mm.curve_area(f2, t2) == pytest.approx(mm.roc_auc(s2, y2))
    with pytest.raises(ValueError, match="NaN"):
        mm.roc_auc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="labels"):
        mm.roc_auc([0.1, 0.2], [0, 2])


def test_roc_curve_points() -> None:
    fpr, tpr, thr = mm.roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert thr.tolist() == [np.inf, 0.8, 0.4, 0.35, 0.1]
    with pytest.raises(ValueError, match="both classes"):
        mm.roc_curve([0.1, 0.2], [0, 0])


def test_wilson_interval_hand_computed() -> None:
    lo, hi = mm.wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    lo, hi = mm.wilson_interval(0, 10)  # centre = half = (z²/20) / (1 + z²/10) = 0.13877
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-5)
    lo, hi = mm.wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.27753, abs=1e-5)
    assert all(math.isnan(v) for v in mm.wilson_interval(0, 0))
    with pytest.raises(ValueError, match="k <= n"):
        mm.wilson_interval(3, 2)
    h = mm.hit_rate([1, 0, 1, 1], [1, 1, 1, 0])
    assert (h["hit_rate"], h["hits"], h["n"]) == (0.5, 2, 4)
    assert (h["ci_low"], h["ci_high"]) == mm.wilson_interval(2, 4)


def test_cluster_bootstrap_resamples_whole_clusters() -> None:
    # two clusters of 5 rows, all hits and all misses: a resample holds 0, 1 or 2 copies of the hit cluster,
    # so its mean is 0, 0.5 or 1 (p = 1/4, 1/2, 1/4) and the 95 % interval is (0, 1), far wider than Wilson's
    v, c = [1] * 5 + [0] * 5, [0] * 5 + [1] * 5
    assert mm.cluster_bootstrap_ci(v, c, n_boot=2000) == (0.0, 1.0)
    lo, hi = mm.wilson_interval(5, 10)
    assert lo > 0.2 and hi < 0.8
    assert mm.cluster_bootstrap_ci([1, 1, 1], [0, 1, 2]) == (1.0, 1.0)
    rng = np.random.default_rng(0)
    v, c = rng.random(200) < 0.6, np.arange(200) // 4
    assert mm.cluster_bootstrap_ci(v, c, seed=3) == mm.cluster_bootstrap_ci(v, c, seed=3)  # seeded


def test_precision_recall_f1_and_edge_cases() -> None:
    m = mm.precision_recall_f1([1, 1, 0, 0, 1], [1, 0, 1, 0, 1])
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 1)
    assert m["precision"] == m["recall"] == m["f1"] == pytest.approx(2 / 3)
    # positives but no prediction: precision undefined, recall and F1 0
    m = mm.precision_recall_f1([0, 0, 0], [1, 0, 1])
    assert math.isnan(m["precision"]) and m["recall"] == 0.0 and m["f1"] == 0.0
    # predictions but no positive: recall undefined, precision and F1 0
    m = mm.precision_recall_f1([1, 0, 0], [0, 0, 0])
    assert m["precision"] == 0.0 and math.isnan(m["recall"]) and m["f1"] == 0.0
    # neither: all undefined
    m = mm.precision_recall_f1([0, 0], [0, 0])
    assert all(math.isnan(m[k]) for k in ("precision", "recall", "f1"))
    m = mm.precision_recall_f1([1, 1], [1, 1])
    assert m["precision"] == m["recall"] == m["f1"] == 1.0


def test_log_loss_and_average_precision_hand_computed() -> None:
    assert mm.log_loss([0.8, 0.3], [1, 0]) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)
    assert mm.log_loss([1.0], [0], eps=1e-12) == pytest.approx(-math.log(1e-12))  # clipped, not infinite
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mm.log_loss([1.5], [1])
    assert mm.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(mm.average_precision([0.1], [0]))


def test_window_recall_and_alert_episodes() -> None:
    e = np.arange(10) * 100  # one symbol, rows every 100 ms
    sym = np.zeros(10, np.int64)
    alert = np.zeros(10, bool)
    alert[[3, 4, 6, 9]] = True  # episodes: rows 3-4, row 6, row 9
    windows = [{"kind": "price_spike", "symbol": "btcusdt", "start_E_ms": 200, "end_E_ms": 400},
               {"kind": "volume_surge", "symbol": "BTCUSDT", "start_E_ms": 700, "end_E_ms": 800},
               {"kind": "book_wipe", "symbol": "BTCUSDT", "start_E_ms": 5000, "end_E_ms": 6000},  # no rows
               {"kind": "book_wipe", "symbol": "ETHUSDT", "start_E_ms": 0, "end_E_ms": 900}]  # other symbol
    w = mm.window_recall(alert, sym, e, windows, ["BTCUSDT"], ANOMALY_KINDS)
    assert w["price_spike"] == {"windows": 1, "caught": 1, "recall": 1.0, "median_delay_ms": 100.0}
    assert w["volume_surge"]["caught"] == 0 and w["volume_surge"]["windows"] == 1
    assert w["book_wipe"]["windows"] == 0 and math.isnan(w["book_wipe"]["recall"])
    assert (w["all"]["windows"], w["all"]["caught"], w["all"]["recall"]) == (2, 1, 0.5)
    # alerts at most 150 ms apart are one episode: rows 3-4, row 6, row 9
    ep = mm.alert_episodes(alert, sym, e, windows, ["BTCUSDT"], ANOMALY_KINDS, gap_ms=150)
    assert (ep["episodes"], ep["overlapping"]) == (3, 1) and ep["precision"] == pytest.approx(1 / 3)
    assert ep["per_kind"]["price_spike"] == 1 and ep["per_kind"]["volume_surge"] == 0
    # 150 ms of grace: the row-9 episode (900 ms) now touches the volume_surge window (ends 800)
    ep = mm.alert_episodes(alert, sym, e, windows, ["BTCUSDT"], ANOMALY_KINDS, grace_ms=150, gap_ms=150)
    assert ep["overlapping"] == 2 and ep["per_kind"]["volume_surge"] == 1
    # the default gap is the strategy's 500 ms pause hold: the four alerts (gaps 100-300 ms) are one pause,
    # and it meets both windows
    ep = mm.alert_episodes(alert, sym, e, windows, ["BTCUSDT"], ANOMALY_KINDS)
    assert (ep["episodes"], ep["overlapping"], ep["gap_ms"]) == (1, 1, mm.EPISODE_GAP_MS)
    assert ep["per_kind"]["price_spike"] == 1 and ep["per_kind"]["volume_surge"] == 1
    starts, ends = mm.merge_episodes(alert, e, 150)
    assert starts.tolist() == [300, 600, 900] and ends.tolist() == [400, 600, 900]
    assert mm.runs([0, 1, 1, 0, 1]) == [(1, 3), (4, 5)]


def test_to_jsonable_turns_nan_into_null() -> None:
    assert mm.to_jsonable({"a": float("nan"), "b": np.float32(0.5), "c": [np.int64(3), np.inf]}) == \
        {"a": None, "b": 0.5, "c": [3, None]}


# -- scripts/evaluate.py -------------------------------------------------------------------------------

def test_evaluate_anomaly_on_the_simulator(tmp_path: Path, evaluate_py: ModuleType,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "anomaly.json"
    rc = evaluate_py.main(["--model", str(ANOMALY_MODEL), "--sim-seeds", "3", "--seconds", "45", "--symbols",
                           SYMBOLS, "--anomalies-per-min", "6", "--json", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "precision" in printed and "windows" in printed
    m = json.loads(out.read_text())
    # the fields, then the extras
    for k in ("model", "n", "precision", "recall", "roc_auc"):
        assert k in m
    assert m["model"] == str(ANOMALY_MODEL) and m["kind"] == "anomaly" and m["labels"] is True
    assert m["n"] > 1000 and 0 < m["positives"] < m["n"]
    for k in ("precision", "recall", "roc_auc", "f1", "average_precision"):
        assert 0.0 <= m[k] <= 1.0, k
    c = m["confusion"]
    assert c["tp"] + c["fp"] + c["fn"] + c["tn"] == m["n"] and c["tp"] + c["fn"] == m["positives"]
    assert m["precision"] == pytest.approx(c["tp"] / (c["tp"] + c["fp"]), abs=1e-6)
    assert set(m["per_kind"]) == set(ANOMALY_KINDS)
    assert set(m["windows"]) == {*ANOMALY_KINDS, "all"} and m["windows"]["all"]["windows"] >= 1
    assert m["episodes"]["episodes"] >= m["episodes"]["overlapping"]
    assert m["episodes_with_grace"]["overlapping"] >= m["episodes"]["overlapping"]


def test_evaluate_simulator_capture_with_and_without_labels(tmp_path: Path, evaluate_py: ModuleType) -> None:
    from procs.sources.simulator import SimParams, write_capture

    cap, labels = tmp_path / "sim.lines.gz", tmp_path / "sim.labels.jsonl"
    write_capture(str(cap), SimParams(symbols=SYMBOLS.split(","), seed=3, anomalies_per_min=6,
                                      start_ms=SIM_START_MS), 45, labels_path=str(labels))
    plain, labelled, sim = tmp_path / "plain.json", tmp_path / "labelled.json", tmp_path / "sim.json"
    assert evaluate_py.main(["--model", str(ANOMALY_MODEL), str(cap), "--json", str(plain), "--quiet"]) == 0
    m = json.loads(plain.read_text())
    assert m["labels"] is False and m["precision"] is None and m["recall"] is None and m["roc_auc"] is None
    assert "no anomaly labels" in m["note"] and 0 <= m["alert_rate"] <= 1 and m["n"] > 1000
    assert sum(m["histogram"]["counts"]) == m["n"]
    # with its labels file (and the simulator's warm-up), the capture scores as the simulator run (the two
    # cut the end differently: the capture at start + 45 s, the run at its first message + 45 s)
    assert evaluate_py.main(["--model", str(ANOMALY_MODEL), str(cap), "--labels", str(labels), "--warmup-s", "10",
                             "--json", str(labelled), "--quiet"]) == 0
    assert evaluate_py.main(["--model", str(ANOMALY_MODEL), "--sim-seeds", "3", "--seconds", "45", "--symbols",
                             SYMBOLS, "--anomalies-per-min", "6", "--json", str(sim), "--quiet"]) == 0
    a, b = json.loads(labelled.read_text()), json.loads(sim.read_text())
    assert a["labels"] is True and abs(a["n"] - b["n"]) <= 10 and a["windows"] == b["windows"]
    for k in ("positives", "precision", "recall", "roc_auc"):
        assert a[k] == pytest.approx(b[k], rel=0.01), k


def test_evaluate_direction_on_the_simulator(tmp_path: Path, evaluate_py: ModuleType) -> None:
    model = export_direction_model(tmp_path / "d.onnx", train_up_fraction=0.4)
    out = tmp_path / "metrics.json"
    assert evaluate_py.main(["--model", str(model), "--sim-seeds", "3", "--seconds", "30", "--symbols", SYMBOLS,
                             "--json", str(out), "--quiet"]) == 0
    m = json.loads(out.read_text())
    assert m["kind"] == "direction" and m["n"] + m["skipped_no_move"] == m["rows"]
    tm = m["baseline_detail"]["training_majority"]
    assert tm["predicts"] == "down" and m["baselines"]["training_majority"] == pytest.approx(1 - m["up_fraction"])


def test_evaluate_direction_on_the_btc_capture(tmp_path: Path, data_dir: Path, evaluate_py: ModuleType,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    capture = data_dir / BTC
    if not capture.is_file():
        pytest.skip(f"{BTC} not in {data_dir}")
    model = export_direction_model(tmp_path / "direction.onnx")
    out = tmp_path / "metrics.json"
    assert evaluate_py.main(["--model", str(model), str(capture), "--json", str(out), "--quiet"]) == 0
    assert "hit rate" in capsys.readouterr().out
    m = json.loads(out.read_text())
    for k in ("model", "n", "hit_rate", "log_loss", "roc_auc", "baselines"):
        assert k in m
    assert {"majority", "imbalance"} <= set(m["baselines"])
    assert all(isinstance(m[k], float) for k in ("hit_rate", "log_loss", "roc_auc"))
    assert m["n"] > 5000 and m["n"] + m["skipped_no_move"] == m["rows"] and m["horizon_ms"] == 0
    lo, hi = m["hit_rate_ci95"]
    assert lo < m["hit_rate"] < hi
    # rows of one label event share its label: resampling events gives the wider, honest interval
    elo, ehi = m["hit_rate_ci95_event_bootstrap"]
    assert 0 < m["label_events"] < m["n"] and elo <= m["hit_rate"] <= ehi and ehi - elo > hi - lo
    up = m["up_fraction"]
    assert m["baselines"]["majority"] == pytest.approx(max(up, 1 - up), abs=1e-6)
    assert m["baselines"]["always_up"] == pytest.approx(up, abs=1e-6)
    assert m["baselines"]["training_majority"] is None  # this sidecar does not record it
    # P(up) = sigmoid(5 imbalance_1) > 0.5 iff imbalance_1 > 0: the model is the imbalance baseline
    assert m["hit_rate"] == pytest.approx(m["baselines"]["imbalance"], abs=1e-3)
    assert m["roc_auc"] == pytest.approx(m["baseline_detail"]["imbalance"]["roc_auc"], abs=2e-3)
    # the held-out tail is a part of it
    tail = tmp_path / "tail.json"
    assert evaluate_py.main(["--model", str(model), str(capture), "--tail", "0.2", "--json", str(tail),
                             "--quiet"]) == 0
    t = json.loads(tail.read_text())
    assert 0.1 * m["n"] < t["n"] < 0.35 * m["n"] and t["tail"] == 0.2


def test_evaluate_refuses_bad_input(tmp_path: Path, evaluate_py: ModuleType,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate_py.main(["--model", str(tmp_path / "none.onnx"), "--sim-seeds", "1", "--quiet"]) == 2
    assert "none.onnx" in capsys.readouterr().err
    model = export_direction_model(tmp_path / "d.onnx", horizon_ms=-5)
    assert evaluate_py.main(["--model", str(model), "--sim-seeds", "1", "--seconds", "15", "--symbols", "BTCUSDT",
                             "--quiet"]) == 2
    assert "sidecar field 'horizon_ms': expected an integer >= 0, found -5" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # --json would overwrite the model's sidecar
        evaluate_py.main(["--model", str(model), "--sim-seeds", "1", "--json", str(model.with_suffix(".json"))])
    assert e.value.code == 2 and "sidecar" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        evaluate_py.main(["--model", str(ANOMALY_MODEL)])  # no rows to evaluate
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        evaluate_py.main(["--sim-seeds", "1,x"])
    assert "comma-separated integers" in capsys.readouterr().err


def test_evaluate_help_runs_as_a_script() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "--json" in r.stdout and "--sim-seeds" in r.stdout and "baselines" in r.stdout


# -- the strategy with and without the flag, and the report --------------------------------------------

def test_strategy_effect_is_deterministic_and_the_flag_suppresses_quotes() -> None:
    from procs.evaluation import load_model, strategy_effect

    model, _ = load_model(ANOMALY_MODEL)
    kw = {"seed": 3, "seconds": 45, "symbols": SYMBOLS.split(","), "anomalies_per_min": 6, "progress": None}
    a = strategy_effect(model, **kw)
    b = strategy_effect(model, **kw)
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b
    inside = [a["groups"][k] for k in ANOMALY_KINDS]
    assert sum(g["updates"] for g in inside) > 0
    for g in [*inside, a["groups"]["outside"]]:
        assert g["no_flags"]["cancel"] == 0  # without the flag nothing is ever pulled
        assert g["no_flags"]["exposure"] in (None, 1.0)  # ... so a quote always rests
    assert a["inside_all"]["no_flags_placed"] > a["inside_all"]["flags_placed"]
    assert 0 < a["inside_all"]["suppression"] <= 1


def test_model_report_writes_every_file(tmp_path: Path) -> None:
    from conftest import shared_data_dir

    report = _script("model_report")
    model = export_direction_model(tmp_path / "direction.onnx")
    out = tmp_path / "report"
    assert report.main(["--out", str(out), "--seconds", "45", "--seeds", "3", "--symbols", SYMBOLS,
                        "--anomalies-per-min", "6", "--direction-model", str(model)]) == 0
    for name in ("report.md", "report.json", "roc_anomaly.png", "scores_anomaly.png", "roc_direction.png",
                 "scores_direction.png"):
        f = out / name
        assert f.is_file() and f.stat().st_size > 500, name
        if name.endswith(".png"):
            assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    data = json.loads((out / "report.json").read_text())
    assert "## Anomaly model" in md and "## Effect of the anomaly flag on the strategy" in md
    assert "suppression" in md and data["strategy_effect"]["seed"] == 3
    assert data["anomaly"]["n"] > 0 and "roc_anomaly.png" in md
    if (shared_data_dir() / BTC).is_file():
        assert data["direction"]["kind"] == "direction" and data["direction"]["n"] > 0
        assert "hit rate" in md
    else:
        assert "skipped" in data["direction"] and "Skipped:" in md
    # no shared data: the direction section and its figures say why
    out2 = tmp_path / "report2"
    assert report.main(["--out", str(out2), "--seconds", "20", "--seeds", "3", "--symbols", "BTCUSDT",
                        "--direction-model", str(model), "--data", str(tmp_path / "no-data")]) == 0
    assert "does not exist" in json.loads((out2 / "report.json").read_text())["direction"]["skipped"]
    assert (out2 / "roc_direction.png").is_file()
