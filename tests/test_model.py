"""procs/model.py and the shipped models/anomaly.onnx: loading, scoring, sidecar validation, the graph itself.

Tests that need an MLP classifier over all 16 features (its graph in numpy, a permuted first layer, a sidecar
from before "kind" and "feature_layout") use the previous shipped model, kept as tests/data/anomaly_mlp_v1.*.
The shipped VAE's own graph and sidecar are tested in tests/test_train_anomaly.py.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest

from procs.datasets import from_simulator
from procs.model import Model, feature_layout_hash
from shm.features import FEATURE_NAMES
from shm.records import FEATURES, FLAG_ANOMALY, SCORE

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "anomaly.onnx"
#: The MLP shipped before the VAE (scripts/train_model.py, since removed): a fixture for the loader tests.
LEGACY = ROOT / "tests" / "data" / "anomaly_mlp_v1.onnx"
N = len(FEATURE_NAMES)


@pytest.fixture(scope="module")
def model() -> Model:
    if not SHIPPED.exists():
        pytest.fail(f"shipped model missing: {SHIPPED} (run scripts/train_anomaly.py)")
    return Model.load(SHIPPED)


@pytest.fixture(scope="module")
def legacy() -> Model:
    return Model.load(LEGACY)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    """Plausible raw feature rows: the sidecar's mean ± a few std, plus a realistic mid."""
    meta = json.loads(SHIPPED.with_suffix(".json").read_text())
    rng = np.random.default_rng(0)
    x = np.zeros((64, N))
    x[:, 0] = 100.0 + rng.normal(size=64)
    for name, mu, sd in zip(meta["features"], meta["mean"], meta["std"], strict=True):
        x[:, FEATURE_NAMES.index(name)] = mu + 3 * sd * rng.normal(size=64)
    return x


def _copy_model(tmp_path: Path, edit, src: Path = SHIPPED) -> Path:
    """The model `src` copied to tmp_path with its sidecar passed through `edit(meta)`."""
    dst = tmp_path / "m.onnx"
    shutil.copy(src, dst)
    meta = json.loads(src.with_suffix(".json").read_text())
    edit(meta)
    dst.with_suffix(".json").write_text(json.dumps(meta))
    return dst


# -- loading and scoring ---------------------------------------------------------------------------

def test_loads_shipped_model(model: Model) -> None:
    assert model.outputs[0] == "anomaly"  # procs/inference.py compares column 0 to the threshold
    assert model.n_outputs == len(model.outputs) >= 1
    assert 0 < model.threshold < 1
    assert 0 <= model.model_id < 2**32
    assert model.feature_index == [FEATURE_NAMES.index(f) for f in model.features]
    assert model.version
    assert SHIPPED.stat().st_size < 1_000_000
    for key in ("overall", "per_kind"):
        assert key in model.metrics


def test_score_shape_dtype_range(model: Model, rows: np.ndarray) -> None:
    for n in (1, 3, 8, 64):
        s = model.score(rows[:n])
        assert s.shape == (n, model.n_outputs)
        assert s.dtype == np.float32
        assert np.all((s[:, 0] >= 0) & (s[:, 0] <= 1 + 1e-6))
    assert model.score(rows[:0]).shape == (0, model.n_outputs)


def test_batch_matches_row_wise(model: Model, rows: np.ndarray) -> None:
    batch = model.score(rows[:8])
    one = np.concatenate([model.score(rows[i:i + 1]) for i in range(8)])
    np.testing.assert_allclose(batch, one, rtol=1e-5, atol=1e-6)
    # a second call of the same size must not change the first result (buffers are reused inside)
    again = model.score(rows[8:16])
    np.testing.assert_allclose(model.score(rows[:8]), batch, rtol=1e-6, atol=1e-7)
    assert not np.allclose(again, batch)


def test_score_takes_strided_feature_views(model: Model, rows: np.ndarray) -> None:
    # procs/inference.py passes rows["values"] of a FEATURES record array: a strided view
    rec = np.zeros(8, FEATURES.dtype)
    rec["values"] = rows[:8]
    np.testing.assert_allclose(model.score(rec["values"]), model.score(np.ascontiguousarray(rows[:8])),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.score(rows[:8].astype(np.float32)), model.score(rows[:8]),
                               rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        model.score(rows[:, :5])


def test_fits_score_record(model: Model, rows: np.ndarray) -> None:
    # what procs/inference.py does with the outputs: the first SCORE.values slots, column 0 vs threshold
    slots = SCORE.dtype["values"].shape[0]
    s = model.score(rows[:4])
    rec = np.zeros(1, SCORE.dtype)
    k = min(model.n_outputs, slots)
    rec["values"][0, :k] = s[0, :k]
    rec["flags"] = FLAG_ANOMALY if s[0, 0] > model.threshold else 0
    assert rec["values"][0, 0] == pytest.approx(float(s[0, 0]))


# -- the graph is what the sidecar says --------------------------------------------------------------

def _numpy_forward(onnx_path: Path, meta: dict, x_raw: np.ndarray) -> np.ndarray:
    """The documented architecture in numpy, with the weights read from the ONNX initializers:
    z = (x - mean) / std -> asinh -> Gemm -> relu -> Gemm -> relu -> Gemm -> softmax -> [1 - p0, p1..]."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    g = onnx.load(str(onnx_path)).graph
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
    gemms = [n for n in g.node if n.op_type == "Gemm"]
    ops = [n.op_type for n in g.node]
    assert len(gemms) == 3, ops
    assert ops.count("Relu") == 2 and ops.count("Softmax") == 1 and ops[0] == "Asinh", ops
    idx = [FEATURE_NAMES.index(f) for f in meta["features"]]
    h = np.arcsinh((x_raw[:, idx] - np.asarray(meta["mean"])) / np.asarray(meta["std"]))
    for i, node in enumerate(gemms):
        attrs = {a.name: a for a in node.attribute}
        w = init[node.input[1]]
        b = init[node.input[2]]
        trans_b = attrs["transB"].i if "transB" in attrs else 0
        h = h @ (w.T if trans_b else w) + b
        if i < len(gemms) - 1:
            h = np.maximum(h, 0.0)
    e = np.exp(h - h.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    return np.concatenate([1.0 - p[:, :1], p[:, 1:]], axis=1)


def test_onnx_graph_equals_numpy_mlp(legacy: Model, rows: np.ndarray) -> None:
    meta = json.loads(LEGACY.with_suffix(".json").read_text())
    want = _numpy_forward(LEGACY, meta, rows)
    s = legacy.score(rows)
    np.testing.assert_allclose(s, want, rtol=1e-4, atol=1e-5)
    # softmax outputs: the kinds sum to P(anomaly)
    np.testing.assert_allclose(s[:, 1:].sum(axis=1), s[:, 0], atol=1e-5)


def test_permuted_feature_order_is_mapped(tmp_path: Path, legacy: Model, rows: np.ndarray) -> None:
    """A model whose sidecar lists the features in another order (first layer permuted to match)."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = legacy
    meta = json.loads(LEGACY.with_suffix(".json").read_text())
    k = len(meta["features"])
    perm = np.random.default_rng(1).permutation(k)
    mo = onnx.load(str(LEGACY))
    first = next(n for n in mo.graph.node if n.op_type == "Gemm")
    t = next(t for t in mo.graph.initializer if t.name == first.input[1])
    w = numpy_helper.to_array(t)  # (hidden, k) with transB=1: input column j = feature j
    t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w[:, perm]), t.name))
    dst = tmp_path / "perm.onnx"
    onnx.save(mo, str(dst))
    meta["features"] = [meta["features"][i] for i in perm]
    meta["mean"] = [meta["mean"][i] for i in perm]
    meta["std"] = [meta["std"][i] for i in perm]
    dst.with_suffix(".json").write_text(json.dumps(meta))
    m2 = Model.load(dst)
    assert m2.feature_index == [FEATURE_NAMES.index(f) for f in meta["features"]]
    assert m2.feature_index != model.feature_index
    assert m2.model_id != model.model_id
    np.testing.assert_allclose(m2.score(rows), model.score(rows), rtol=1e-4, atol=1e-5)


# -- sidecar validation ----------------------------------------------------------------------------

def _drop(field: str):
    return lambda meta: meta.pop(field)


@pytest.mark.parametrize(("edit", "field", "found"), [
    (_drop("threshold"), "threshold", "missing"),
    (_drop("features"), "features", "missing"),
    (_drop("metrics"), "metrics", "missing"),
    (lambda m: m["mean"].pop(), "mean", "items"),
    (lambda m: m["std"].append(1.0), "std", "items"),
    (lambda m: m["features"].__setitem__(2, "no_such_feature"), "features", "no_such_feature"),
    (lambda m: m["features"].__setitem__(2, m["features"][1]), "features", "duplicates"),
    (lambda m: m["std"].__setitem__(3, float("nan")), "std[3]", "nan"),
    (lambda m: m["std"].__setitem__(0, 0.0), "std[0]", "0.0"),
    (lambda m: m["mean"].__setitem__(1, "1.5"), "mean[1]", "1.5"),
    # a threshold above 1 is an error score's unless the sidecar says column 0 is a probability
    (lambda m: m.update(threshold=1.5, score_kind="probability"), "threshold", "1.5"),
    (lambda m: m.__setitem__("threshold", -0.5), "threshold", "-0.5"),
    (lambda m: m.__setitem__("score_kind", "logit"), "score_kind", "logit"),
    (lambda m: m.__setitem__("kind", "regime"), "kind", "regime"),
    (lambda m: m.__setitem__("feature_layout", {"n": 16}), "feature_layout", "'n'"),
    (lambda m: m.__setitem__("outputs", []), "outputs", "[]"),
    (lambda m: m["outputs"].pop(), "outputs", "names"),
    (lambda m: m.__setitem__("version", 3), "version", "3"),
    (lambda m: m.__setitem__("trained_on", []), "trained_on", "list"),
    (lambda m: m.__setitem__("history", {"kind": "ew_mean", "tau_ms": 0}), "history.tau_ms", "0"),
    (lambda m: m.__setitem__("history", {"kind": "ew_mean", "tau_ms": True}), "history.tau_ms", "True"),
    (lambda m: m.__setitem__("history", {"kind": "max", "tau_ms": 500}), "history", "max"),
    (lambda m: m.__setitem__("history", 500), "history", "500"),
])
def test_bad_sidecar_names_field(tmp_path: Path, edit, field: str, found: str) -> None:
    path = _copy_model(tmp_path, edit)
    with pytest.raises(ValueError) as ei:
        Model.load(path)
    msg = str(ei.value)
    assert f"'{field}'" in msg and "expected" in msg and "found" in msg and found in msg, msg


# -- a frame model: the shipped VAE's lookup and score in compiled kernels around its network -------------

def _frame_edit(fn):
    return lambda meta: fn(meta["frame"])


@pytest.mark.parametrize(("edit", "field", "expected", "found"), [
    (lambda f: f["centre"].pop(), "frame.centre", "4 x 13 finite numbers", "shape 3 x 13"),
    (lambda f: f["inv_scale"][2].pop(), "frame.inv_scale", "4 x 13 finite numbers", "rows of [13, 13, 12, 13] items"),
    (lambda f: f["inv_scale"].__setitem__(1, [1.0] * 14), "frame.inv_scale", "4 x 13", "rows of [13, 14, 13, 13]"),
    (lambda f: f["bounds"].append(1.0), "frame.bounds", "3 finite numbers", "shape 4"),
    (lambda f: f["score_scale"].pop(), "frame.score_scale", "4 finite numbers", "shape 3"),
    (lambda f: f.__setitem__("score_offset", 1.0), "frame.score_offset", "4 finite numbers", "shape scalar"),
    (lambda f: f["symbols"].pop(), "frame.bounds", "2 finite numbers", "shape 3"),  # K from the symbols
    (lambda f: f["centre"][0].__setitem__(0, float("nan")), "frame.centre", "4 x 13 finite numbers", "nan"),
    (lambda f: f.pop("one_hot"), "frame.one_hot", "a finite number (> 0)", "missing"),
    (lambda f: f.__setitem__("clip_latent", [8.0, -8.0]), "frame.clip_latent", "[lo, hi], lo < hi", "[8.0, -8.0]"),
    (lambda f: f.__setitem__("bounds", f["bounds"][::-1]), "frame.bounds", "K - 1 prices, strictly decreasing", "["),
    (lambda f: f.__setitem__("latent", 0), "frame.latent", "int >= 1", "0"),
    (lambda f: f.__setitem__("kind", "vae"), "frame.kind", "'cvae-frame-v1'", "'vae'"),
])
def test_frame_with_wrong_constants_is_refused_naming_the_field(tmp_path: Path, edit, field: str, expected: str,
                                                                found: str) -> None:
    """A sidecar whose pre/post constants have the wrong shape (or values) is refused: the message names the
    field, what was expected and what was found."""
    path = _copy_model(tmp_path, _frame_edit(edit))
    with pytest.raises(ValueError) as ei:
        Model.load(path)
    msg = str(ei.value)
    assert f"'{field}'" in msg and f"expected {expected}" in msg and "found" in msg and found in msg, msg


def test_frame_must_match_the_graph_and_the_kind(tmp_path: Path) -> None:
    # the frame's width (from its symbols, features and latent) is the graph's input width
    path = _copy_model(tmp_path, _frame_edit(lambda f: f.__setitem__("latent", 3)))
    with pytest.raises(ValueError, match=r"graph inputs: expected one float32 tensor \[batch, 28\]"):
        Model.load(path)
    # without its frame, the network's 30-column input is not the 14 standardised features
    with pytest.raises(ValueError, match=r"'features': expected 30 names \(the graph's input width\), found '14"):
        Model.load(_copy_model(tmp_path, lambda m: m.pop("frame")))
    with pytest.raises(ValueError, match=r"'frame': expected absent \(a direction model"):
        Model.load(_copy_model(tmp_path, lambda m: (m.pop("history"), m.__setitem__("kind", "direction"))),
                   kind="direction")


def test_frame_model_scores_and_its_id_covers_the_frame(tmp_path: Path, model: Model, rows: np.ndarray) -> None:
    assert model.frame is not None and model.graph_width == model.frame.width == 30
    assert len(model.graph_outputs) == 2 and model.n_outputs == 2
    # the public pieces give what score gives: pre kernel, the graph, post kernel
    x32 = model.graph_input(rows)
    got = model.from_graph(model.session.run(model.graph_outputs, {model._in: x32}))
    np.testing.assert_array_equal(got, model.score(rows))
    raw = zlib.crc32(SHIPPED.read_bytes())
    assert model.model_id == zlib.crc32(model.frame.digest, raw) & 0xFFFFFFFF != raw
    other = Model.load(_copy_model(tmp_path, _frame_edit(lambda f: f["score_offset"].__setitem__(
        slice(None), [v - 1.0 for v in f["score_offset"]]))))
    assert other.model_id != model.model_id
    assert (other.score(rows)[:, 0] <= model.score(rows)[:, 0]).all()


def test_frame_model_gives_nan_for_nan_and_stays_finite_far_out(model: Model, rows: np.ndarray) -> None:
    x = np.repeat(rows[:1], 5, axis=0)
    x[0, FEATURE_NAMES.index("spread_bps")] = np.nan
    x[1, 0] = np.nan  # no price, no symbol
    x[2, 0] = np.inf
    x[3, FEATURE_NAMES.index("ret_1s_bps")] = 1e30
    x[4, 0] = 0.0  # an empty book: the lowest-priced symbol, as the lookup always did
    s = model.score(x)
    assert np.isnan(s[:3]).all() and np.isfinite(s[3:]).all()
    assert s[3, 0] > 0.99 and s[3, 1] > 5


def test_a_sidecar_without_frame_scores_as_before(legacy: Model, rows: np.ndarray) -> None:
    """No `frame`: the graph takes the standardised features and its first output is the score, as always."""
    assert legacy.frame is None and legacy.graph_width == len(legacy.features)
    assert legacy.graph_outputs == [legacy.session.get_outputs()[0].name]
    assert legacy.model_id == zlib.crc32(LEGACY.read_bytes())
    x32 = ((rows[:, legacy.feature_index] - legacy.mean) / legacy.std).astype(np.float32)
    np.testing.assert_allclose(legacy.graph_input(rows), x32, rtol=1e-6, atol=1e-7)
    want = legacy.session.run([legacy._out], {legacy._in: legacy.graph_input(rows)})[0]
    np.testing.assert_array_equal(legacy.score(rows), want)
    np.testing.assert_array_equal(legacy.from_graph([want]), want)


# -- kind and the book's feature layout ----------------------------------------------------------------

def test_old_sidecar_loads_as_anomaly_model(legacy: Model) -> None:
    # the previous shipped sidecar predates "kind", "feature_layout" and "score_kind"
    model = legacy
    meta = json.loads(LEGACY.with_suffix(".json").read_text())
    assert "kind" not in meta and "feature_layout" not in meta
    assert model.kind == "anomaly" and not model.kind_declared
    assert model.score_kind == "probability" and model.feature_layout is None


def test_declared_feature_layout_equal_to_the_book_loads(tmp_path: Path) -> None:
    for layout in (list(FEATURE_NAMES), feature_layout_hash()):
        path = _copy_model(tmp_path, lambda m, lay=layout: m.update(kind="anomaly", feature_layout=lay))
        m = Model.load(path, kind="anomaly")
        assert m.feature_layout == layout and m.kind_declared
    assert feature_layout_hash().startswith("sha256:") and feature_layout_hash() != feature_layout_hash(["x"])


def test_reordered_feature_layout_is_refused_naming_the_features(tmp_path: Path) -> None:
    trained = list(FEATURE_NAMES)
    trained[6], trained[7] = trained[7], trained[6]  # ofi and ofi_1s swapped since training
    path = _copy_model(tmp_path, lambda m: m.__setitem__("feature_layout", trained), LEGACY)
    with pytest.raises(ValueError) as ei:
        Model.load(path)
    msg = str(ei.value)
    assert "'feature_layout'" in msg and "expected" in msg and "found" in msg
    assert str(list(FEATURE_NAMES)) in msg and str(trained) in msg  # both layouts
    assert "'ofi' was index 7, is now 6" in msg and "'ofi_1s' was index 6, is now 7" in msg
    assert "moved or are new: ['ofi', 'ofi_1s']" in msg  # the MLP reads both


def test_renamed_feature_is_refused_naming_it(tmp_path: Path) -> None:
    # trained when FEATURE_NAMES[6] was called "order_flow": the sidecar's feature list says so too
    trained = ["order_flow" if f == "ofi" else f for f in FEATURE_NAMES]

    def edit(m: dict) -> None:
        m["feature_layout"] = trained
        m["features"] = ["order_flow" if f == "ofi" else f for f in m["features"]]

    with pytest.raises(ValueError) as ei:
        Model.load(_copy_model(tmp_path, edit, LEGACY))
    msg = str(ei.value)
    assert "'features'" in msg and "unknown ['order_flow']" in msg
    assert str(list(FEATURE_NAMES)) in msg and str(trained) in msg

    # the layout renamed a feature the model does not read: still refused, the layout is not the book's
    def edit2(m: dict) -> None:
        m["feature_layout"] = trained
        m["features"] = m["features"][:6]
        m["mean"], m["std"] = m["mean"][:6], m["std"][:6]

    with pytest.raises(ValueError, match=r"'order_flow' \(index 6\) is not in the book's layout; 'ofi' \(index 6\) "
                                         r"is new in the book's layout"):
        Model.load(_copy_model(tmp_path, edit2, LEGACY))


def test_feature_layout_hash_mismatch_is_refused(tmp_path: Path) -> None:
    old_hash = feature_layout_hash([*FEATURE_NAMES[:-1], "trades_per_s"])
    path = _copy_model(tmp_path, lambda m: m.__setitem__("feature_layout", old_hash))
    with pytest.raises(ValueError) as ei:
        Model.load(path)
    msg = str(ei.value)
    assert old_hash in msg and feature_layout_hash() in msg and str(list(FEATURE_NAMES)) in msg
    assert "'trade_rate_10s'" in msg  # the features the model reads are named


def test_kind_is_checked_against_the_slot(tmp_path: Path) -> None:
    path = _copy_model(tmp_path, lambda m: m.__setitem__("kind", "anomaly"))
    with pytest.raises(ValueError, match=r"'kind': expected 'direction' \(the model is loaded as the direction "
                                         r"model\), found 'anomaly'"):
        Model.load(path, kind="direction")
    # a direction sidecar needs no threshold (P(up) > 0.5 reads as up) and may not call its score an error
    # (the MLP's graph: the shipped VAE's sidecar has a frame, which a direction model may not have)
    path = _copy_model(tmp_path, lambda m: (m.pop("threshold"), m.pop("history", None),
                                            m.__setitem__("kind", "direction")), src=LEGACY)
    d = Model.load(path, kind="direction")
    assert d.kind == "direction" and d.threshold == 0.5 and d.score_kind == "probability"
    path = _copy_model(tmp_path, lambda m: m.update(kind="direction", score_kind="error"), src=LEGACY)
    with pytest.raises(ValueError, match="'score_kind'"):
        Model.load(path)
    # an anomaly sidecar still needs its threshold
    with pytest.raises(ValueError, match=r"'threshold'.*missing"):
        Model.load(_copy_model(tmp_path, lambda m: m.pop("threshold")))


def test_threshold_above_one_means_an_error_score(tmp_path: Path, rows: np.ndarray) -> None:
    m = Model.load(_copy_model(tmp_path, lambda m: m.__setitem__("threshold", 2.5)))
    assert m.score_kind == "error"
    np.testing.assert_allclose(m.level(np.array([0.0, 1.25, 2.5, 25.0, -1.0])), [0.0, 0.5, 1.0, 1.0, 0.0])
    p = Model.load(_copy_model(tmp_path, lambda m: None))
    np.testing.assert_allclose(p.level(np.array([0.25, 1.5])), [0.25, 1.0])


def test_score_without_copy_returns_the_reused_buffer(model: Model, rows: np.ndarray) -> None:
    a = model.score(rows[:2], copy=False)
    np.testing.assert_allclose(a, model.score(rows[:2]), rtol=1e-6)
    first = a.copy()
    b = model.score(rows[2:4], copy=False)
    assert b is a and not np.allclose(a, first)  # valid until the next call of the same size


def test_missing_or_broken_files(tmp_path: Path) -> None:
    path = _copy_model(tmp_path, lambda m: None)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Model.load(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match="sidecar"):
        Model.load(path)
    with pytest.raises(FileNotFoundError):
        Model.load(tmp_path / "absent.onnx")


# -- on real (simulated) data ----------------------------------------------------------------------

def test_flags_simulated_anomalies(model: Model) -> None:
    """Mean P(anomaly) inside labelled windows of a short held-out simulation beats the calm rows."""
    try:
        import procs.sources.simulator  # noqa: F401
    except ImportError as e:
        pytest.skip(f"simulator not available: {e}")
    ds = from_simulator(11, 90.0, ["BTCUSDT", "ETHUSDT"], anomalies_per_min=6.0)
    inside = ds.anomaly != 0
    if not inside.any():
        pytest.skip("no labelled anomaly in the short run")
    s = np.concatenate([model.score(ds.x[i:i + 4096]) for i in range(0, len(ds.x), 4096)])
    p_in, p_out = float(s[inside, 0].mean()), float(s[~inside, 0].mean())
    assert p_in > p_out + 0.1, (p_in, p_out)
    assert np.mean(s[inside, 0] > model.threshold) > np.mean(s[~inside, 0] > model.threshold)


# -- the alert history (sidecar "history") --------------------------------------------------------------

def test_history_field_loads_and_a_direction_model_refuses_it(tmp_path: Path) -> None:
    path = _copy_model(tmp_path, lambda m: m.update(history={"kind": "ew_mean", "tau_ms": 250}))
    m = Model.load(path, kind="anomaly")
    assert m.history_tau_ms == 250.0 and "history_tau_ms=250" in repr(m)
    (tmp_path / "plain").mkdir()
    plain = _copy_model(tmp_path / "plain", lambda m: m.pop("history", None))
    assert Model.load(plain, kind="anomaly").history_tau_ms == 0.0
    (tmp_path / "d").mkdir()
    d = _copy_model(tmp_path / "d", lambda m: m.update(kind="direction", history={"kind": "ew_mean", "tau_ms": 9}))
    with pytest.raises(ValueError, match=r"'history': expected absent"):
        Model.load(d, kind="direction")


def test_ew_history_is_a_time_mean_that_ignores_the_sampling_rate() -> None:
    from procs.model import ew_history

    # a step from 0 to 1 at t = 1000 ms, held: after tau the mean is 1 - 1/e, however often it is sampled
    tau = 500.0
    for step_ms in (1, 10, 50):
        t = np.arange(0, 3001, step_ms, dtype=np.float64)
        lev = (t >= 1000).astype(np.float64)
        h = ew_history(t, np.zeros(len(t), np.int64), lev, tau)
        at = int(np.flatnonzero(t == 1000 + tau)[0]) + 1  # the value of the step is held from t = 1000 on
        assert h[at - 1] == pytest.approx(1 - np.exp(-1), abs=1e-12 + step_ms / tau)
        assert h[0] == 0.0 and h[-1] == pytest.approx(1 - np.exp(-2000 / tau), rel=1e-9, abs=step_ms / tau)
    # symbols are independent, and a symbol's first row starts at its own value
    h = ew_history(np.array([0.0, 0.0, 100.0, 100.0]), np.array([0, 1, 0, 1]), np.array([0.2, 0.9, 0.2, 0.9]), tau)
    assert h.tolist() == pytest.approx([0.2, 0.9, 0.2, 0.9])


def test_alert_level_is_column_0_without_history(model: Model) -> None:
    c = np.array([0.1, 0.7, 0.3])
    if model.history_tau_ms == 0:
        assert model.alert_level(c, np.arange(3), np.zeros(3, np.int64)).tolist() == c.tolist()
    else:  # the shipped model has a history: the EW mean of one symbol, the first row its own value
        got = model.alert_level(c, np.array([0.0, 10.0, 20.0]), np.zeros(3, np.int64))
        a = np.exp(-10.0 / model.history_tau_ms)
        assert got.tolist() == pytest.approx([0.1, 0.1, 0.1 * a + 0.7 * (1 - a)])


# -- both models in one session --------------------------------------------------------------------------

def test_model_pair_scores_exactly_what_the_two_models_do(model: Model, rows: np.ndarray) -> None:
    from procs.model import ModelPair

    pytest.importorskip("onnx")
    direction = Model.load(ROOT / "models" / "direction.onnx", kind="direction")
    pair, why = ModelPair.build(model, direction)
    assert pair is not None, why
    for n in (1, 3, len(rows)):
        a, d = pair.score(rows[:n])
        np.testing.assert_array_equal(a, model.score(rows[:n]))
        np.testing.assert_array_equal(d, direction.score(rows[:n]))


def test_model_pair_without_onnx_falls_back_and_says_why(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from procs.model import ModelPair

    monkeypatch.setitem(sys.modules, "onnx", None)  # as on a runtime-only install
    pair, why = ModelPair.build(model, Model.load(ROOT / "models" / "direction.onnx", kind="direction"))
    assert pair is None and "onnx package" in why
