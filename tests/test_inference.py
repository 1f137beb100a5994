"""The inference stage (procs/inference.py): two models in one pass, one SCORE record per symbol laid out as
shm.records.SCORE_* says, the direction model optional, and the benchmark's smoke run.

The models here are tiny linear ONNX graphs built with onnx.helper inside the tests (never shipped), so
every expected output is computed exactly in numpy.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from procs import inference as inf
from procs import scorelog
from procs.agent import AgentContext
from procs.config import FEATURES_QUEUE, SCORES_QUEUE, Config
from procs.inference import InferenceAgent, fill_scores, load_models, pair_id
from procs.model import Model
from shm.features import FEATURE_INDEX, FEATURE_NAMES
from shm.metrics import RunState
from shm.records import (
    FEATURES,
    FLAG_ANOMALY,
    FLAG_FEATURES_WARM,
    KIND_SCORE,
    SCORE,
    SCORE_ANOMALY,
    SCORE_ANOMALY_EXTRA,
    SCORE_ANOMALY_RAW,
    SCORE_DIRECTION_1,
    SCORE_N_VALUES,
    SCORE_UP,
)
from shm.ring import Board, SpscRing

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SYMS = ["AAA", "BBB", "CCC"]


def linear_model(folder: Path, name: str, features: list[str], w: np.ndarray, b: np.ndarray, outputs: list[str],
                 **sidecar: object) -> Path:
    """y = z @ w.T + b with z = (x - mean) / std of `features`: an ONNX graph + sidecar in `folder`."""
    k_out, k_in = w.shape
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", k_out])],
        [numpy_helper.from_array(w.astype(np.float32), "w"), numpy_helper.from_array(b.astype(np.float32), "b")])
    path = folder / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    meta = {"features": features, "mean": [0.5] * k_in, "std": [2.0] * k_in, "outputs": outputs, "threshold": 0.5,
            "version": name, "trained_on": {"test": True}, "metrics": {}}
    meta.update(sidecar)
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def expected(path: Path, x: np.ndarray) -> np.ndarray:
    """The linear model at `path` in float64 numpy (what ONNX Runtime must give, to float32 rounding)."""
    meta = json.loads(path.with_suffix(".json").read_text())
    g = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
    z = (x[:, [FEATURE_INDEX[f] for f in meta["features"]]] - np.asarray(meta["mean"])) / np.asarray(meta["std"])
    return z @ init["w"].T + init["b"]


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(5)
    a_feats = ["spread_bps", "imbalance_1", "vol_10s_bps"]
    d_feats = ["ofi", "ret_1s_bps", "imbalance_5"]  # not contiguous in FEATURE_NAMES: the gather path
    return {
        # five columns like the shipped MLP: the score, then four kinds
        "anomaly": linear_model(tmp_path, "anom", a_feats, rng.normal(size=(5, 3)), rng.normal(size=5) * 0.1,
                                ["anomaly", "k1", "k2", "k3", "k4"], kind="anomaly",
                                feature_layout=list(FEATURE_NAMES)),
        # one column, an unbounded error score with a threshold above 1 (a VAE's reconstruction error)
        "error": linear_model(tmp_path, "err", a_feats, rng.normal(size=(1, 3)) * 3, np.array([4.0]),
                              ["reconstruction_error"], threshold=4.0, score_kind="error"),
        "direction": linear_model(tmp_path, "dir", d_feats, rng.normal(size=(2, 3)), np.zeros(2), ["up", "down"],
                                  kind="direction", feature_layout=list(FEATURE_NAMES)),
    }


class Stage:
    """An InferenceAgent on real boards, with features written for it and scores read back."""

    def __init__(self, run: str, tmp: Path, **inference: object) -> None:
        self.state = RunState.create(run, 1)
        self.fb = Board.create(run, "features", FEATURES, len(SYMS))
        self.sb = Board.create(run, "scores", SCORE, len(SYMS))
        cfg = Config.from_dict({"inference": {"min_interval_us": 0, **inference}})
        self.log: list[str] = []
        logger = logging.getLogger(f"test_inference.{run}")
        logger.warning = self.log.append  # type: ignore[method-assign]
        self.agent = InferenceAgent()
        self.agent.on_start(AgentContext(run=run, run_dir=str(tmp), config=cfg, symbols=SYMS,
                                         counters=self.state.stats.slots[0]["counters"],
                                         hist_hop=self.state.hist(0, 0), hist_e2e=self.state.hist(0, 1), log=logger))
        self.rng = np.random.default_rng(9)
        self.seq = 0

    def write(self, s: int, times: int = 1) -> np.ndarray:
        """Publish `times` feature vectors for symbol s; returns the last one."""
        rec = np.zeros(1, FEATURES.dtype)
        for _ in range(times):
            self.seq += 1
            rec["seq"] = self.seq
            rec["symbol"] = s
            rec["t_origin_ns"] = 1000 + self.seq
            rec["t_publish_ns"] = 2000 + self.seq
            rec["values"] = self.rng.normal(size=len(FEATURE_NAMES)) * 3
            rec["values"][0, 0] = 100.0
            rec["flags"] = FLAG_FEATURES_WARM  # a symbol with 10 s of history: the models judge it
            self.fb.write(s, rec)
        return rec[0].copy()

    def score(self, s: int) -> np.void:
        out = np.zeros(1, SCORE.dtype)
        assert self.sb.read(s, out) > 0
        return out[0]

    def counters(self) -> dict[str, int]:
        c = self.state.stats.slots[0]["counters"]
        return dict(zip(InferenceAgent.COUNTERS, c.tolist(), strict=False))

    def close(self) -> None:
        self.agent.on_close()
        for b in (self.fb, self.sb):
            b.close()
        self.state.close()


def test_two_models_one_score_record_per_symbol(run_id: str, tmp_path: Path, models: dict[str, Path]) -> None:
    st = Stage(run_id, tmp_path, model=str(models["anomaly"]), direction_model=str(models["direction"]))
    try:
        # with the onnx package the two graphs run as one session (one call per pass); the figures are the same
        assert st.agent.describe()["one_session"] == (importlib.util.find_spec("onnx") is not None)
        feats = [st.write(s, times=1 + s) for s in range(len(SYMS))]  # symbol s updated 1 + s times
        assert st.agent.do_work() == 3  # one pass, all three symbols in one batch
        anomaly, direction = Model.load(models["anomaly"]), Model.load(models["direction"], kind="direction")
        for s, f in enumerate(feats):
            x = f["values"][None, :]
            a = expected(models["anomaly"], x)[0]
            d = expected(models["direction"], x)[0]
            r = st.score(s)
            v = r["values"]
            assert (r["symbol"], r["kind"], r["feature_seq"]) == (s, KIND_SCORE, f["seq"])
            assert r["t_origin_ns"] == f["t_origin_ns"] and r["t_publish_ns"] > 0
            assert r["n_outputs"] == SCORE_N_VALUES == len(v)
            assert r["model_id"] == pair_id(anomaly, direction) != anomaly.model_id
            np.testing.assert_allclose(v[SCORE_ANOMALY_RAW], a[0], rtol=1e-5, atol=1e-5)
            # a probability model: the level is column 0 itself, clipped to [0, 1]
            assert v[SCORE_ANOMALY] == pytest.approx(min(max(v[SCORE_ANOMALY_RAW], 0.0), 1.0))
            np.testing.assert_allclose(v[SCORE_UP], d[0], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(v[SCORE_DIRECTION_1], d[1], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(v[SCORE_ANOMALY_EXTRA:], a[1:5], rtol=1e-5, atol=1e-5)
            assert bool(r["flags"] & FLAG_ANOMALY) == bool(v[SCORE_ANOMALY_RAW] > anomaly.threshold)
        c = st.counters()
        assert c["batches"] == 1 and c["scored"] == c["scored_anomaly"] == c["scored_direction"] == 3
        assert c["features_skipped"] == 0 + 1 + 2  # conflated: only the newest vector of each symbol is scored
        assert c["alerts"] == sum(bool(st.score(s)["flags"] & FLAG_ANOMALY) for s in range(3))
        assert st.state.hist(0, 0).sum() == 3 and st.state.hist(0, 1).sum() == 3

        # the next pass scores only the symbol that changed
        assert st.agent.do_work() == 0
        before = st.score(0)
        f = st.write(2)
        assert st.agent.do_work() == 1
        assert st.score(2)["feature_seq"] == f["seq"]
        assert st.score(0).tobytes() == before.tobytes()
        assert st.counters()["scored"] == 4
    finally:
        st.close()


def test_lockstep_scores_every_queued_vector_in_order(run_id: str, tmp_path: Path, models: dict[str, Path]) -> None:
    """inference.lockstep: every FEATURES record of the queue gets its own SCORE, in order (feature_seq = the
    record's seq, which the strategy pairs with BOOK.seq), none skipped; the board keeps each symbol's newest;
    a full scores queue holds the features back instead of dropping them."""
    qf = SpscRing.create(run_id, FEATURES_QUEUE, FEATURES, 8)
    qs = SpscRing.create(run_id, SCORES_QUEUE, SCORE, 8)
    st = Stage(run_id, tmp_path, model=str(models["anomaly"]), direction_model=str(models["direction"]),
               lockstep="on")
    try:
        fprod, scons = qf.producer(), qs.consumer(0)
        rng = np.random.default_rng(3)
        recs = np.zeros(12, FEATURES.dtype)
        recs["symbol"] = [0, 1, 0, 2, 2, 2, 1, 0, 1, 2, 0, 0]
        recs["values"] = rng.normal(size=(12, len(FEATURE_NAMES))) * 3
        recs["values"][:, 0] = 100.0
        recs["flags"] = FLAG_FEATURES_WARM
        assert fprod.write(recs[:8]) == 8  # the ring stamps seq 1..8
        assert st.agent.do_work() == 8
        assert fprod.write(recs[8:]) == 4
        assert st.agent.do_work() == 0  # the scores queue is full: the features wait, none is lost
        got = scons.read(8)
        assert st.agent.do_work() == 4
        got = np.concatenate([got, scons.read(8)])
        assert got["feature_seq"].tolist() == list(range(1, 13))
        assert got["symbol"].tolist() == recs["symbol"].tolist()
        a = expected(models["anomaly"], recs["values"])
        d = expected(models["direction"], recs["values"])
        np.testing.assert_allclose(got["values"][:, SCORE_ANOMALY_RAW], a[:, 0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["values"][:, SCORE_UP], d[:, 0], rtol=1e-5, atol=1e-5)
        for s in range(3):  # the board: the symbol's last record
            assert st.score(s)["feature_seq"] == 1 + max(i for i in range(12) if recs["symbol"][i] == s)
        c = st.counters()
        assert c["scored"] == 12 and c["features_skipped"] == 0 and c["batches"] == 2
        # scores.csv: every SCORE, in order, written by the stage itself in lockstep
        assert st.agent.do_work() == 0  # idle: the file is flushed
        lines = (tmp_path / "scores.csv").read_text().splitlines()
        assert lines[0] == ",".join(scorelog.COLUMNS) and len(lines) == 13
        assert [ln.split(",")[1] for ln in lines[1:]] == [SYMS[s] for s in recs["symbol"]]
        assert lines[1:] == [",".join(map(str, scorelog.row(g, SYMS[int(g["symbol"])], 0))) for g in got]
    finally:
        st.close()
        qf.close()
        qs.close()


def test_scorelog_rows_match_row() -> None:
    """The column-wise formatter writes exactly what the launcher's per-record one does."""
    rng = np.random.default_rng(4)
    recs = np.zeros(50, SCORE.dtype)
    recs["exch_ts_ms"] = rng.integers(1, 2**41, 50)
    recs["values"] = rng.normal(size=(50, SCORE_N_VALUES)) * 10.0 ** rng.integers(-9, 9, (50, 1))
    recs["values"][3, SCORE_UP] = np.nan
    recs["flags"] = rng.choice([0, FLAG_ANOMALY, FLAG_ANOMALY | 1], 50)
    names = np.array([f"S{i % 3}" for i in range(50)], dtype=object)
    assert scorelog.rows(recs, names) == [scorelog.row(r, n, 0) for r, n in zip(recs, names, strict=True)]


def test_newest_per_symbol() -> None:
    out = np.zeros(6, SCORE.dtype)
    out["symbol"] = [2, 0, 2, 9, 0, 1]  # 9: not a symbol of the run, left out
    assert sorted(inf.newest_per_symbol(out, 6, np.zeros(3, np.int64)).tolist()) == [2, 4, 5]
    assert inf.newest_per_symbol(out, 2, np.zeros(3, np.int64)).tolist() == [1, 0]  # symbol order: 0, then 2


def test_error_score_model_without_direction(run_id: str, tmp_path: Path, models: dict[str, Path]) -> None:
    st = Stage(run_id, tmp_path, model=str(models["error"]), direction_model="")
    try:
        err = Model.load(models["error"])
        assert err.score_kind == "error" and err.threshold == 4.0
        feats = [st.write(s) for s in range(3)]
        assert st.agent.do_work() == 3
        for s, f in enumerate(feats):
            raw = expected(models["error"], f["values"][None, :])[0, 0]
            v = st.score(s)["values"]
            np.testing.assert_allclose(v[SCORE_ANOMALY_RAW], raw, rtol=1e-5, atol=1e-5)
            # an error score: level = score / threshold in [0, 1], 1 at and above the alert threshold
            assert v[SCORE_ANOMALY] == pytest.approx(min(max(v[SCORE_ANOMALY_RAW] / 4.0, 0.0), 1.0))
            assert bool(st.score(s)["flags"] & FLAG_ANOMALY) == bool(v[SCORE_ANOMALY_RAW] > 4.0)
            assert np.isnan(v[SCORE_UP]) and np.isnan(v[SCORE_DIRECTION_1])  # no direction model
            assert np.isnan(v[SCORE_ANOMALY_EXTRA:]).all()  # one output column: no extras
            assert st.score(s)["model_id"] == err.model_id
        c = st.counters()
        assert c["scored_anomaly"] == 3 and c["scored_direction"] == 0
    finally:
        st.close()


def test_fill_scores_levels_and_flags() -> None:
    """The kernel alone: an error score 10x the threshold gives level 1, not 10; below it, the ratio."""
    rows = np.zeros(3, FEATURES.dtype)
    rows["symbol"] = [0, 1, 2]
    rows["t_publish_ns"] = [90, 80, 70]
    rows["flags"] = FLAG_FEATURES_WARM
    out = np.zeros(3, SCORE.dtype)
    a = np.array([[30.0], [1.5], [-1.0]], np.float32)
    hist = np.zeros(27648, np.int64), np.zeros(27648, np.int64)
    ctr = np.zeros(8, np.int64)
    alerts = fill_scores(out, rows, 3, a, np.zeros((3, 0), np.float32), 3.0, 1 / 3.0, 7, 100, *hist, ctr, 5,
                         0.0, np.zeros((3, 4)))
    assert alerts == 1 and out["flags"].tolist() == [FLAG_ANOMALY, 0, 0]
    np.testing.assert_allclose(out["values"][:, SCORE_ANOMALY], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(out["values"][:, SCORE_ANOMALY_RAW], [30.0, 1.5, -1.0])
    assert ctr[:6].tolist() == [1, 3, 5, 1, 3, 0]  # batches, scored, skipped, alerts, per model
    assert hist[0].sum() == 3 and (out["model_id"] == 7).all()


def test_default_direction_model_absent_warns_and_runs(run_id: str, tmp_path: Path, models: dict[str, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # the default path stands in for models/direction.onnx before it is trained (the real one may exist)
    missing = str(tmp_path / "not_trained_yet.onnx")
    monkeypatch.setattr(inf, "DEFAULT_DIRECTION_MODEL", missing)
    st = Stage(run_id, tmp_path, model=str(models["anomaly"]), direction_model=missing)
    try:
        assert st.agent.direction is None
        assert any("inference.direction_model" in m and "anomaly model only" in m for m in st.log), st.log
        st.write(1)
        assert st.agent.do_work() == 1
        assert np.isnan(st.score(1)["values"][SCORE_UP])
    finally:
        st.close()


def test_named_direction_model_must_exist(tmp_path: Path, models: dict[str, Path]) -> None:
    cfg = Config.from_dict({"inference": {"model": str(models["anomaly"]),
                                          "direction_model": str(tmp_path / "nope.onnx")}})
    with pytest.raises(FileNotFoundError, match=r"inference\.direction_model: model .*nope\.onnx"):
        load_models(cfg.inference)


def test_direction_slot_refuses_an_anomaly_model(tmp_path: Path, models: dict[str, Path]) -> None:
    cfg = Config.from_dict({"inference": {"model": str(models["anomaly"]), "direction_model": str(models["anomaly"])}})
    with pytest.raises(ValueError, match=r"'kind': expected 'direction'.*found 'anomaly'"):
        load_models(cfg.inference)
    # a sidecar without "kind" is taken as what it is loaded as, with a warning
    old = json.loads(models["direction"].with_suffix(".json").read_text())
    del old["kind"]
    models["direction"].with_suffix(".json").write_text(json.dumps(old))
    told: list[str] = []
    cfg.inference.direction_model = str(models["direction"])
    _, d = load_models(cfg.inference, warn=told.append)
    assert d is not None and d.kind == "direction" and not d.kind_declared
    assert told and "declares no \"kind\"" in told[0]


def test_shipped_anomaly_model_in_the_stage(run_id: str, tmp_path: Path, models: dict[str, Path]) -> None:
    """The shipped (old-sidecar) model loads as the anomaly model; its five columns all reach SCORE."""
    shipped = ROOT / "models" / "anomaly.onnx"
    st = Stage(run_id, tmp_path, model=str(shipped), direction_model=str(models["direction"]))
    try:
        f = st.write(0)
        assert st.agent.do_work() == 1
        want = Model.load(shipped).score(f["values"][None, :])[0]
        v = st.score(0)["values"]
        if st.agent.anomaly.score_kind == "probability":
            np.testing.assert_allclose(v[SCORE_ANOMALY], want[0], rtol=1e-6)
        np.testing.assert_allclose(v[SCORE_ANOMALY_RAW], want[0], rtol=1e-6)
        k = min(len(want) - 1, SCORE_N_VALUES - SCORE_ANOMALY_EXTRA)
        np.testing.assert_allclose(v[SCORE_ANOMALY_EXTRA:SCORE_ANOMALY_EXTRA + k], want[1:1 + k], rtol=1e-6)
        assert np.isfinite(v[SCORE_UP])
    finally:
        st.close()


def test_bench_inference_quick(tmp_path: Path) -> None:
    """The benchmark's smoke run: every method and batch, both models, the pass; no figure is held to a bar."""
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_inference.py"), "--quick", "--json", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert set(data["models"]) == {"anomaly", "direction"}
    standin = data["models"]["direction"]["standin"]
    assert standin == (not (ROOT / "models" / "direction.onnx").is_file())
    assert ("STAND-IN" in res.stdout) == standin
    for label, rows in data["results"].items():
        methods = {r["method"] for r in rows}
        assert {"sess.run", "iobinding", "Model.score", "Model.score+copy"} <= methods, label
        assert {r["batch"] for r in rows} == {1, 4, 8}
        for r in rows:
            assert 0 < r["p10_us"] <= r["median_us"] <= r["p90_us"] and r["calls"] == 300, r
    assert {(p["models"], p["symbols"]) for p in data["pass"]} == {
        (m, n) for m in ("anomaly+direction", "anomaly") for n in (1, 4, 8)}
    acc = data["acceptance"]
    assert acc["target_p50_us"] == 8.0 and acc["path"] == "Model.score"
    for key in ("anomaly", "direction"):
        assert acc[key]["met"] == (acc[key]["median_us"] <= 8.0)
    assert "| anomaly | Model.score |" in res.stdout
    assert not list((ROOT / "models").glob("standin*")), "the stand-in must never land in models/"


def test_run_py_direction_model_option(tmp_path: Path) -> None:
    """run.py refuses a named direction model that does not exist (exit 2, the field named), before any run."""
    def run_py(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "run.py"), "--out", str(tmp_path), *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    r = run_py("--direction-model", str(tmp_path / "nope.onnx"))
    assert r.returncode == 2
    assert "field=inference.direction_model" in r.stderr and "nope.onnx" in r.stderr
    assert not [p for p in tmp_path.iterdir() if p.is_dir()], "a refused configuration must not start a run"
    r = run_py("--print-config", "--direction-model", "")
    assert r.returncode == 0 and 'direction_model = ""' in r.stdout
    r = run_py("--print-config")
    assert 'direction_model = "models/direction.onnx"' in r.stdout


def test_cold_features_raise_no_alert() -> None:
    """A row before the symbol's features are warm: scored and published, but no alert and level 0."""
    rows = np.zeros(2, FEATURES.dtype)
    rows["symbol"] = [0, 1]
    rows["flags"] = [0, FLAG_FEATURES_WARM]
    out = np.zeros(2, SCORE.dtype)
    a = np.array([[0.9], [0.9]], np.float32)
    hist = np.zeros(27648, np.int64), np.zeros(27648, np.int64)
    ctr = np.zeros(8, np.int64)
    alerts = fill_scores(out, rows, 2, a, np.zeros((2, 0), np.float32), 0.5, 0.0, 7, 100, *hist, ctr, 0,
                         0.0, np.zeros((2, 4)))
    assert alerts == 1 and out["flags"].tolist() == [0, FLAG_ANOMALY]
    np.testing.assert_allclose(out["values"][:, SCORE_ANOMALY], [0.0, 0.9])
    np.testing.assert_allclose(out["values"][:, SCORE_ANOMALY_RAW], [0.9, 0.9])
    assert ctr[6] == 1  # counted as cold


def test_fill_scores_with_history_alerts_on_the_time_mean_as_evaluated_offline() -> None:
    """With a sidecar history the flag and SCORE_ANOMALY follow the symbol's EW time mean of column 0, pass by
    pass the same as procs.model.ew_history over the same rows (what the evaluation scores)."""
    from procs.model import ew_history

    tau = 500.0
    t_ms = np.array([0, 0, 100, 300, 400, 900, 1000, 1600], np.float64)
    sym = np.array([0, 1, 0, 0, 1, 0, 1, 0], np.int64)
    col0 = np.array([0.1, 0.2, 0.9, 0.9, 0.95, 0.9, 0.1, 0.1], np.float32)
    ew = np.zeros((2, 4))
    hist = np.zeros(27648, np.int64), np.zeros(27648, np.int64)
    ctr = np.zeros(8, np.int64)
    flags, levels = [], []
    for i in range(len(t_ms)):  # one row per pass, as the conflated stage sees them
        rows = np.zeros(1, FEATURES.dtype)
        rows["symbol"] = sym[i]
        rows["exch_ts_ms"] = int(t_ms[i]) + 1_700_000_000_000  # the history runs on exchange time
        rows["t_origin_ns"] = 5_000_000_000 - i  # never read by it: receive time may even run backwards
        rows["flags"] = FLAG_FEATURES_WARM
        out = np.zeros(1, SCORE.dtype)
        fill_scores(out, rows, 1, col0[i:i + 1, None], np.zeros((1, 0), np.float32), 0.5, 0.0, 7, 100, *hist, ctr, 0,
                    tau, ew)
        flags.append(int(out["flags"][0]))
        levels.append(float(out["values"][0, SCORE_ANOMALY]))
        assert out["values"][0, SCORE_ANOMALY_RAW] == pytest.approx(col0[i])  # the raw column is still published
    want = ew_history(t_ms, sym, col0.astype(np.float64), tau)
    np.testing.assert_allclose(levels, want, rtol=1e-9, atol=1e-12)
    assert flags == [FLAG_ANOMALY if w > 0.5 else 0 for w in want]
    # symbol 0's 0.9 at 100 ms does not alert at once (one row of 0.1 history), it does once it persists
    assert flags[2] == 0 and FLAG_ANOMALY in flags
