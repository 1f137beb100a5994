"""scripts/train_anomaly.py and the shipped models/anomaly.onnx + .json it wrote.

A tiny training run (2 symbols, 60 simulated seconds per seed, 1 epoch; a few seconds) exports, passes
onnx.checker and the parity check, loads with procs.model.Model and scores; a second tiny run gives the
same bytes. The shipped model's sidecar is checked for completeness, and its graph (the network) with
procs/model.py's pre and post kernels against a numpy re-implementation that reads the lookup,
normalisation and calibration from the sidecar (so the sidecar documents the model) and the weights read
back from the graph, which rebuild its constants and the sidecar's `frame` exactly; the kernels and the
whole path against torch, at the lookup's boundaries too.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from procs.datasets import ANOMALY_KINDS, FEATURE_LAYOUT, Dataset
from procs.model import Model, feature_layout_hash
from shm.features import FEATURE_NAMES

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "anomaly.onnx"
TINY = ["--seconds", "60", "--symbols", "BTCUSDT,ETHUSDT", "--anomalies-per-min", "6", "--train-seeds", "1",
        "--val-seeds", "2", "--test-seeds", "3", "--epochs", "1", "--hidden", "16"]


def _module():
    spec = importlib.util.spec_from_file_location("train_anomaly", ROOT / "scripts" / "train_anomaly.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_anomaly", mod)
    spec.loader.exec_module(mod)
    return mod


ta = _module()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "a.onnx"
    assert ta.main([*TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def shipped() -> tuple[Model, dict]:
    return Model.load(SHIPPED, kind="anomaly"), json.loads(SHIPPED.with_suffix(".json").read_text())


# -- a tiny run ------------------------------------------------------------------------------------------

def test_tiny_run_exports_a_checked_graph_that_loads_and_scores(tiny: Path) -> None:
    mo = onnx.load(str(tiny))
    onnx.checker.check_model(mo, full_check=True)
    assert [o.version for o in mo.opset_import if o.domain in ("", "ai.onnx")] == [ta.OPSET]
    dims = mo.graph.input[0].type.tensor_type.shape.dim
    meta = json.loads(tiny.with_suffix(".json").read_text())
    lay = ta.SlimLayout(2, len(ta.RECONSTRUCTED), meta["trained_on"]["latent"], meta["trained_on"]["hidden"])
    assert dims[0].dim_param and dims[1].dim_value == lay.width  # dynamic batch axis; the frame
    assert [o.name for o in mo.graph.output] == ta.GRAPH_OUTPUTS
    assert max(meta["onnx_parity_max_abs_diff"].values()) <= 1e-5
    m = Model.load(tiny, kind="anomaly")
    assert m.frame is not None and m.graph_width == lay.width
    assert m.outputs == ta.OUTPUTS and m.features == ta.MODEL_FEATURES and 0 < m.threshold < 1
    from procs.datasets import from_simulator

    ds = from_simulator(4, 60, ["BTCUSDT", "ETHUSDT"], anomalies_per_min=6.0)
    s = np.concatenate([m.score(ds.x[i:i + 4096]) for i in range(0, len(ds), 4096)])
    assert s.shape == (len(ds), 2) and np.isfinite(s).all()
    assert (s[:, 0] >= 0).all() and (s[:, 0] < 1).all()
    np.testing.assert_allclose(s[:, 0], 1.0 - np.exp(-s[:, 1]), atol=1e-5)  # r / (1 + r) and ln(1 + r)
    for n in (1, 3, 8):  # batch sizes the inference stage uses
        np.testing.assert_allclose(m.score(ds.x[:n]), s[:n], rtol=1e-5, atol=1e-6)


def test_tiny_run_is_byte_reproducible(tiny: Path, tmp_path: Path) -> None:
    again = tmp_path / "b.onnx"
    assert ta.main([*TINY, "--out", str(again)]) == 0
    assert again.read_bytes() == tiny.read_bytes()
    a, b = (json.loads(p.with_suffix(".json").read_text()) for p in (tiny, again))
    for side in (a, b):
        side["trained_on"].pop("seconds")  # wall-clock timings
        side["trained_on"].pop("command")  # names the --out path
    assert a == b


def test_seeds_in_two_splits_are_refused() -> None:
    with pytest.raises(SystemExit) as ei:
        ta.main([*TINY, "--test-seeds", "2"])
    assert ei.value.code == 2


# -- metrics -------------------------------------------------------------------------------------------

def _toy() -> Dataset:
    """One symbol, a row every 100 ms for 60 s, one price_spike window at 10-12 s."""
    e = 1_000_000 + np.arange(600, dtype=np.int64) * 100
    win = {"kind": "price_spike", "symbol": "BTCUSDT", "start_E_ms": 1_010_000, "end_E_ms": 1_012_000}
    lab = np.where((e >= win["start_E_ms"]) & (e <= win["end_E_ms"]), 1, 0).astype(np.int64)
    n = len(e)
    return Dataset(np.zeros((n, len(FEATURE_NAMES))), np.zeros(n, np.int64), e, e * 1_000_000, lab, ["BTCUSDT"],
                   "toy", [win])


def test_window_metrics_merge_alerts_within_the_pause_hold_and_apply_the_tolerance() -> None:
    ds = _toy()
    t = (ds.e_ms - ds.e_ms[0]) / 1000.0
    level = np.zeros(len(ds))
    level[(t >= 10.5) & (t <= 10.8)] = 0.9  # inside the window
    level[(t >= 11.2) & (t <= 11.4)] = 0.9  # 400 ms later: the same pause
    level[(t >= 13.5) & (t <= 13.6)] = 0.9  # 1.5 s after the end: the anomaly's echo
    level[(t >= 40.0) & (t <= 40.1)] = 0.9  # calm market: a false alarm
    wm = ta.window_metrics([ds], [level], 0.5)
    assert wm["windows"] == 1 and wm["caught"] == 1 and wm["recall"] == 1.0
    assert wm["per_kind"]["price_spike"]["median_delay_ms"] == 500.0
    assert wm["episodes"] == 3
    assert wm["precision"] == {"tolerance_0ms": round(1 / 3, 4), "tolerance_2000ms": round(2 / 3, 4),
                               "tolerance_10000ms": round(2 / 3, 4)}
    assert wm["false_alarms"] == 1 and wm["per_symbol"]["BTCUSDT"]["false_alarms"] == 1
    assert wm["false_alarms_per_symbol_hour"] == pytest.approx(1 / (59.9 / 3600), rel=1e-3)


def test_row_metrics_and_calibration_on_a_separable_toy() -> None:
    ds = _toy()
    level = np.where(ds.anomaly != 0, 0.8, 0.1)
    rm = ta.row_metrics(level, ds.anomaly, 0.5)
    assert rm["precision"] == rm["recall"] == rm["roc_auc"] == 1.0
    assert rm["per_kind"]["price_spike"]["recall"] == 1.0 and rm["per_kind"]["book_wipe"]["recall"] is None
    thr, cal = ta.calibrate_threshold([ds], [level])
    assert 0.1 <= thr < 0.8 and cal["objective_value"] == 1.0


# -- the shipped model ---------------------------------------------------------------------------------

def test_shipped_sidecar_is_complete_and_consistent(shipped: tuple[Model, dict]) -> None:
    m, meta = shipped
    assert meta["kind"] == "anomaly" and m.kind == "anomaly" and m.kind_declared
    assert meta["feature_layout"] == FEATURE_LAYOUT == feature_layout_hash()  # the book's current layout
    assert m.feature_layout == FEATURE_LAYOUT
    assert meta["features"] == ta.MODEL_FEATURES and meta["outputs"] == ta.OUTPUTS
    assert set(meta["output_meaning"]) == set(meta["outputs"])
    assert 0 < meta["threshold"] < 1 and m.score_kind == "probability"
    assert re.fullmatch(r"[0-9a-f]{64}", meta["training_data_sha256"])
    assert meta["torch_version"].startswith("2.") and meta["onnx_opset"] == ta.OPSET
    assert 0 <= max(meta["onnx_parity_max_abs_diff"].values()) <= 1e-5
    assert isinstance(meta["architecture"], str) and meta["version"]
    t = meta["trained_on"]
    assert not set(t["test_seeds"]) & (set(t["train_seeds"]) | set(t["validation_seeds"]))
    assert t["command"].startswith("python scripts/train_anomaly.py")
    norm = meta["normalisation"]
    k, f = len(norm["symbols"]), len(meta["features"]) - 1
    assert norm["symbols"] == t["symbols"] and norm["features"] == meta["features"][1:]
    assert np.shape(norm["centre"]) == np.shape(norm["scale"]) == (k, f) and len(norm["log_mid"]) == k
    assert set(meta["score"]["score_calm"]) == set(meta["score"]["score_ref"]) == set(norm["symbols"])
    met = meta["metrics"]
    assert set(met["per_kind"]) == set(met["windows"]["per_kind"]) == set(ANOMALY_KINDS)
    for key in ("precision", "recall", "f1", "roc_auc"):
        assert 0 <= met["overall"][key] <= 1
    assert met["threshold"] == pytest.approx(meta["threshold"], abs=1e-6)
    assert set(met["target"]) >= {"met_row_level", "met_window_level"}


def _numpy_forward(params: dict[str, np.ndarray], meta: dict, x: np.ndarray) -> np.ndarray:
    """The model's math in float64 from the raw features: sidecar standardisation, lookup by nearest log
    price, per-symbol asinh, encoder and decoder on [., onehot], negative ELBO, per-symbol calibration."""
    def silu(h: np.ndarray) -> np.ndarray:
        return h / (1.0 + np.exp(-h))

    def lin(h: np.ndarray, name: str) -> np.ndarray:
        return h @ params[f"{name}.weight"].T + params[f"{name}.bias"]

    norm, sc = meta["normalisation"], meta["score"]
    syms = norm["symbols"]
    z = (x[:, [FEATURE_NAMES.index(f) for f in meta["features"]]] - meta["mean"]) / meta["std"]
    k = np.argmin(np.abs(np.log(np.maximum(z[:, 0:1], 1e-9)) - np.asarray(norm["log_mid"])), axis=1)
    onehot = np.eye(len(syms))[k]
    u = np.arcsinh((z[:, 1:] - np.asarray(norm["centre"])[k]) / np.asarray(norm["scale"])[k])
    h = lin(silu(lin(silu(lin(np.c_[u, onehot], "enc.0")), "enc.2")), "enc.4")
    lat = h.shape[1] // 2
    mu, lv = h[:, :lat], np.clip(h[:, lat:], *ta.LOGVAR_Z)
    o = lin(silu(lin(silu(lin(np.c_[mu, onehot], "dec.0")), "dec.2")), "dec.4")
    mean, ls = o[:, :u.shape[1]], np.clip(o[:, u.shape[1]:], *ta.LOGVAR_X)
    s = 0.5 * np.sum((u - mean) ** 2 * np.exp(-ls) + ls, axis=1) - 0.5 * np.sum(1 + lv - mu ** 2 - np.exp(lv), axis=1)
    calm = np.array([sc["score_calm"][sym] for sym in syms])[k]
    ref = np.array([sc["score_ref"][sym] for sym in syms])[k]
    r = np.maximum(s - calm, 0) / ref
    return np.c_[r / (1 + r), np.log1p(r)]


def _rows(meta: dict, n: int, seed: int, spread: tuple[float, ...] = (1, 3, 10)) -> np.ndarray:
    """Raw feature rows: a symbol's price +-0.2 %, the other features at its centre +- spread x scale."""
    norm = meta["normalisation"]
    log_mid = np.asarray(norm["log_mid"])
    rng = np.random.default_rng(seed)
    k = rng.integers(0, len(log_mid), n)
    z = np.empty((n, len(meta["features"])))
    z[:, 0] = np.exp(log_mid[k]) * (1 + 0.002 * rng.standard_normal(n))
    centre, scale = np.asarray(norm["centre"]), np.asarray(norm["scale"])
    z[:, 1:] = centre[k] + scale[k] * rng.standard_normal((n, centre.shape[1])) * rng.choice(spread, (n, 1))
    x = np.zeros((n, len(FEATURE_NAMES)))
    for j, name in enumerate(meta["features"]):
        x[:, FEATURE_NAMES.index(name)] = z[:, j] * meta["std"][j] + meta["mean"][j]
    return x


def test_shipped_graph_matches_a_numpy_forward_from_the_sidecar(shipped: tuple[Model, dict]) -> None:
    """The model (graph + procs/model.py kernels) is what the sidecar says: lookup, asinh, VAE, ELBO, r. The
    lookup, normalisation and calibration come from the sidecar; the weights from the graph (read back by
    scripts/train_anomaly.py model_from_onnx); the sidecar's `frame` (the pre and post kernels' tables) must
    hold the sidecar's centre, scale and calibration."""
    m, meta = shipped
    g = onnx.load(str(SHIPPED)).graph
    ops = [n.op_type for n in g.node if n.op_type != "Constant"]
    assert len(ops) == 16 and set(ops) == {"Gemm", "Sigmoid", "Mul"}  # the network only
    model = ta.model_from_onnx(SHIPPED)
    params = {k: v.double().numpy() for k, v in model.state_dict().items()}
    x = _rows(meta, 256, 3)
    np.testing.assert_allclose(m.score(x), _numpy_forward(params, meta, x), rtol=1e-5, atol=1e-5)

    # the pre and post kernels' tables are the sidecar's normalisation and calibration, in lookup order
    norm, fr = meta["normalisation"], meta["frame"]
    order = np.argsort(norm["log_mid"])[::-1]  # one-hot column -> symbol, highest price first
    assert fr["symbols"] == [norm["symbols"][k] for k in order]
    np.testing.assert_allclose(fr["centre"], np.asarray(norm["centre"])[order], rtol=1e-6)
    np.testing.assert_allclose(fr["inv_scale"], 1 / np.asarray(norm["scale"])[order], rtol=1e-6)
    ref = np.array([meta["score"]["score_ref"][s] for s in fr["symbols"]])
    calm = np.array([meta["score"]["score_calm"][s] for s in fr["symbols"]])
    np.testing.assert_allclose(fr["score_scale"], 0.5 / ref, rtol=1e-6)
    np.testing.assert_allclose(fr["score_offset"], -(0.5 * fr["latent"] + calm) / ref, rtol=1e-6)


def test_shipped_graph_is_what_the_export_writes_from_its_weights(shipped: tuple[Model, dict]) -> None:
    """Read back and rebuilt (no retraining), the shipped graph has the same constants, and the sidecar's
    `frame` is what frame_spec writes (json round trip included)."""
    from onnx import numpy_helper

    model = ta.model_from_onnx(SHIPPED)
    g = onnx.load(str(SHIPPED)).graph
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    w = ta.slim_weights(model)
    assert set(w) == set(init)
    for name, v in w.items():
        np.testing.assert_array_equal(v, init[name], err_msg=name)
    assert json.loads(json.dumps(ta.frame_spec(model))) == shipped[1]["frame"]


def _norm(meta: dict) -> object:
    nj = meta["normalisation"]
    return ta.Normalisation(np.asarray(meta["mean"]), np.asarray(meta["std"]), nj["symbols"],
                            np.asarray(nj["log_mid"]), np.asarray(nj["centre"]), np.asarray(nj["scale"]))


@pytest.fixture(scope="module")
def real_rows() -> np.ndarray:
    """Raw feature rows from the simulator (a test seed of the shipped model, 60 s, its four symbols)."""
    from procs.datasets import from_simulator

    ds = from_simulator(11, 60, ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"], anomalies_per_min=6.0)
    return ds.x[np.linspace(0, len(ds) - 1, 4000).astype(int)]


def test_pre_and_post_kernels_match_the_torch_module(shipped: tuple[Model, dict], real_rows: np.ndarray) -> None:
    """procs/model.py's pre kernel against the torch model's `prepare` (the symbol, u and the one-hot), its
    post kernel on the torch network's P and Q against the torch model's forward (to 1e-5), on real and
    random rows."""
    import torch

    m, meta = shipped
    model = ta.model_from_onnx(SHIPPED)
    net = ta.inference_module(model)
    norm = _norm(meta)
    lay = ta.SlimLayout(len(norm.symbols), len(ta.RECONSTRUCTED), model.latent, meta["trained_on"]["hidden"])
    order = np.argsort(norm.log_mid)[::-1]  # one-hot column -> symbol
    rnd = ta.random_inputs(norm, 4000, 7).astype(np.float64)
    x_rnd = np.zeros((len(rnd), len(FEATURE_NAMES)))
    for j, name in enumerate(meta["features"]):
        x_rnd[:, FEATURE_NAMES.index(name)] = rnd[:, j] * meta["std"][j] + meta["mean"][j]
    for what, x in (("real", real_rows), ("random", x_rnd)):
        frame = m.graph_input(x)
        z = torch.from_numpy(norm.standardise(x))
        with torch.no_grad():
            u, onehot, k = model.prepare(z)
            p, q = net(torch.from_numpy(frame))
            want = model(z).numpy()
        col = frame[:, lay.onehot].argmax(axis=1)
        np.testing.assert_array_equal(order[col], k.numpy(), err_msg=what)  # the same symbol
        np.testing.assert_array_equal(frame[:, lay.onehot], onehot.numpy()[:, order] * ta.ONE_HOT, err_msg=what)
        np.testing.assert_allclose(frame[:, lay.feat], u.numpy(), rtol=1e-6, atol=1e-6, err_msg=what)
        assert not frame[:, np.r_[lay.look, lay.kl, lay.mu, lay.zero]].any()
        got = m.from_graph([p.numpy(), q.numpy()])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=what)
        np.testing.assert_allclose(m.score(x), want, rtol=0, atol=1e-5, err_msg=what)  # with ONNX Runtime


def test_exported_graph_matches_torch_and_the_lookup_rule(tmp_path: Path, shipped: tuple[Model, dict]) -> None:
    """procs/model.py's path (pre kernel, the exported network on ONNX Runtime, post kernel) against the
    trained model's torch forward, to 1e-5, on calm and far-out rows. At the lookup's boundaries (mids at,
    just below and just above each midpoint between two symbols' prices, and an empty book) the row scores
    as the symbol whose price it exceeds the midpoint below (the lowest for an empty book), bit for bit.
    Batch 1 and a whole batch agree to 1e-6."""
    import onnxruntime as ort
    import torch

    _, meta = shipped
    model = ta.model_from_onnx(SHIPPED)
    out = tmp_path / "a.onnx"
    ta.export_onnx(ta.inference_module(model), out)
    nj = meta["normalisation"]
    norm = _norm(meta)
    z = np.concatenate([norm.standardise(_rows(meta, 500, 5, (1, 3, 10, 100))), ta.random_inputs(norm, 500, 6)])
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    frame = ta.runtime_frame(meta["frame"])

    def score(zz: np.ndarray) -> np.ndarray:
        return ta.frame_scores(sess, frame, zz.astype(np.float64))

    got = score(z)
    with torch.no_grad():
        want = model(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    one = np.concatenate([score(z[i:i + 1]) for i in range(len(z))])
    np.testing.assert_allclose(one, got, rtol=0, atol=1e-6)

    lm = np.sort(np.asarray(nj["log_mid"]))
    bounds = np.asarray(meta["frame"]["bounds"], np.float32)[::-1]  # the float32 midpoints, ascending
    np.testing.assert_allclose(bounds, np.exp((lm[1:] + lm[:-1]) / 2), rtol=1e-6)
    mids = np.r_[np.float32(0), *[[np.nextafter(b, np.float32(0)), b, np.nextafter(b, np.float32(np.inf))]
                                  for b in bounds]].astype(np.float32)
    edge = np.repeat(z[:1], len(mids), axis=0)
    edge[:, 0] = mids
    own = edge.copy()
    own[:, 0] = np.exp(lm[(mids[:, None] > bounds[None, :]).sum(axis=1)])  # the symbol's own price
    np.testing.assert_array_equal(score(edge), score(own))


def test_shipped_history_is_the_one_chosen_on_validation(shipped: tuple[Model, dict]) -> None:
    m, meta = shipped
    grid = meta["metrics"]["calibration"]["history_grid"]
    assert set(grid) == {str(t) for t in ta.HISTORY_TAUS_MS}
    best = max(grid, key=lambda t: (grid[t]["objective_value"], -int(t)))
    assert m.history_tau_ms == float(best) and (("history" in meta) == (int(best) > 0))
    assert grid[best]["threshold"] == pytest.approx(meta["threshold"], abs=1e-6)


def test_window_metrics_agree_with_the_evaluation_definitions() -> None:
    """scripts/train_anomaly.py and procs/evaluation.py (so evaluate.py and model_report.py) count windows
    and episodes the same way: one definition, procs.metrics_ml.merge_episodes."""
    from procs import metrics_ml as mm

    ds = _toy()
    rng = np.random.default_rng(4)
    level = np.where(rng.random(len(ds)) < 0.05, 0.9, 0.1)
    level[(ds.e_ms >= 1_010_300) & (ds.e_ms <= 1_010_500)] = 0.9
    wm = ta.window_metrics([ds], [level], 0.5)
    alert = level > 0.5
    wr = mm.window_recall(alert, ds.symbol, ds.e_ms, ds.windows, ds.symbols, ANOMALY_KINDS)
    assert (wm["windows"], wm["caught"]) == (wr["all"]["windows"], wr["all"]["caught"])
    for tol in ta.TOLERANCES_MS:
        ep = mm.alert_episodes(alert, ds.symbol, ds.e_ms, ds.windows, ds.symbols, ANOMALY_KINDS, grace_ms=tol)
        assert ep["episodes"] == wm["episodes"] and ep["gap_ms"] == wm["pause_hold_ms"]
        assert wm["precision"][f"tolerance_{tol}ms"] == round(ep["precision"], 4)


def test_choose_history_picks_a_history_when_only_persistence_gives_the_anomaly_away() -> None:
    ds = _toy()
    rng = np.random.default_rng(6)
    level = rng.uniform(0.0, 0.6, len(ds))  # calm: single rows reach 0.6, but not for long
    inside = (ds.e_ms >= ds.windows[0]["start_E_ms"]) & (ds.e_ms <= ds.windows[0]["end_E_ms"])
    level[inside] = 0.45  # the anomaly: never above a calm row's peak, but it persists
    tau, thr, cal = ta.choose_history([ds], [level], taus=(0, 500))
    assert tau == 500 and cal["objective_value"] == 1.0 and set(cal["history_grid"]) == {"0", "500"}
    assert cal["history_grid"]["500"]["threshold"] == pytest.approx(thr, abs=1e-6)
    assert cal["history_grid"]["0"]["objective_value"] < 1.0
