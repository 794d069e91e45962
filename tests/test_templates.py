"""Template bank: polar matching against the seed's brute force, preprocessing, bank files,
the TensorFlow graph and its ONNX export (tf2onnx + a real onnxruntime session)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import h5py
import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import spearmanr

from hitstream import frame_kernel as pp
from hitstream.errors import ConfigError, InputDataError, OutputError
from hitstream.geometry import DetectorGeometry
from hitstream.simulate import SimConfig, simulate_frames
from trainer.templates.bank import build_bank, load_bank, save_bank
from trainer.templates.features import (
    BruteForceConfig,
    PolarConfig,
    PolarFeatures,
    rotate_frames,
    seed_preprocess,
)
from trainer.templates.matching import match_frames
from trainer.templates.polar import PolarGrid, build_polar_map

GEOM = DetectorGeometry()
VALID = GEOM.valid_pixels()
N_TEMPLATES = 16


def angle_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Difference of in-plane angles modulo 180° (Friedel), in [0, 90]."""
    d = np.abs(np.asarray(a) - np.asarray(b)) % 180
    return np.minimum(d, 180 - d)


@pytest.fixture(scope="module")
def smooth():
    """Noise-free single-particle patterns (no hole/gap, centred beam) at 1e5 photons;
    templates are the patterns, frames the same patterns rotated by known angles, both
    masked by the real detector."""
    open_geom = DetectorGeometry(hole_radius_px=0.0, gap_rows=0)
    cfg = SimConfig(geometry=open_geom, fractions=(1, 0, 0, 0), center_jitter_px=0.0)
    pats = simulate_frames(0, N_TEMPLATES, seed=3, config=cfg, noise=False).frames
    pats = pats * (1e5 / pats.sum(axis=(1, 2), keepdims=True))
    angles = np.random.default_rng(1).uniform(0, 360, N_TEMPLATES)
    frames = np.stack(
        [ndimage.rotate(p, a, reshape=False, order=1) for p, a in zip(pats, angles, strict=True)]
    )
    return (pats * VALID).astype(np.float32), (frames * VALID).astype(np.float32), angles


@pytest.fixture(scope="module")
def polar_bank(smooth):
    templates, _, _ = smooth
    return build_bank(templates, source_run="smooth.h5", source_index=np.arange(N_TEMPLATES) * 3)


@pytest.fixture(scope="module")
def mixed_frames(smooth):
    """Simulated noisy frames of every class, and rotated smooth singles with Poisson noise
    (distances well away from 0, where float32 rounding would be relative-large)."""
    rng = np.random.default_rng(4)
    rotated = rng.poisson(smooth[1][:6] * 0.02).astype(np.float32)  # ~2,000 photons
    return np.concatenate([rotated, simulate_frames(0, 12, seed=5).frames])


def test_polar_finds_template_and_angle(smooth, polar_bank):
    _, frames, angles = smooth
    r = polar_bank.matcher().match(frames)
    np.testing.assert_array_equal(r.index, np.arange(N_TEMPLATES))
    assert angle_error(r.angle_deg, angles).max() <= 1.0
    assert np.all((r.angle_deg >= 0) & (r.angle_deg < 180))
    assert np.all(r.distance < 0.3)


def test_polar_ranks_templates_like_bruteforce(smooth, polar_bank):
    templates, frames, _ = smooth
    polar = polar_bank.matcher().match(frames, all_distances=True)
    brute_bank = build_bank(templates, mode="bruteforce")
    brute = brute_bank.matcher().match(frames, all_distances=True)
    rho = [spearmanr(polar.all_distances[i], brute.all_distances[i])[0] for i in range(len(frames))]
    assert np.median(rho) >= 0.95
    assert min(rho) >= 0.9
    # the reference misses a few templates, and its angle is mostly 0°: rotating a
    # template also rotates its zeroed gap and hole, and that mismatch dominates
    assert (brute.index == np.arange(N_TEMPLATES)).mean() >= 0.6


def test_bruteforce_is_the_seed_maths(smooth):
    templates, frames, _ = smooth
    bank = build_bank(templates[:3], mode="bruteforce", bruteforce=BruteForceConfig(n_rotations=4))
    r = bank.matcher().match(frames[:2], all_distances=True)
    x = seed_preprocess(frames[:2])
    rot = rotate_frames(seed_preprocess(templates[:3]), [0, 5, 10, 15])
    loop = np.array(
        [[min(np.linalg.norm(f - t) for t in rots) for rots in rot] for f in x], np.float32
    )
    np.testing.assert_allclose(r.all_distances, loop, rtol=1e-3)
    np.testing.assert_allclose(r.distance, loop.min(axis=1), rtol=1e-3)


def test_rotate_frames_is_scipy_rotate_about_the_beam_centre():
    img = np.zeros(GEOM.shape, np.float32)
    img[129, 178] = 1.0  # 50 px right of the centre (129.5, 128)
    out = rotate_frames(img[None], [90.0])[0, 0]
    np.testing.assert_array_equal(out, ndimage.rotate(img, 90.0, reshape=False, order=1))
    y, x = np.unravel_index(np.argmax(out), out.shape)
    assert abs(x - 128) <= 1 and 75 <= y <= 81  # counter-clockwise: moved up


def test_seed_preprocess():
    x = np.array([[[-3.0, 1.0], [2.0, np.nan]], [[0.0, 0.0], [0.0, 0.0]]], np.float32)
    y = seed_preprocess(x)
    np.testing.assert_allclose(y[0], [[0, 127.5], [255, 0]])
    np.testing.assert_array_equal(y[1], 0)


def test_polar_map_area_mean_and_shift():
    grid = PolarGrid((64, 64), (31.5, 31.5), 4.0, 30.0, 13, 36)
    pm = build_polar_map(grid)
    np.testing.assert_allclose(pm.apply(np.full((1, 64, 64), 3.0)), 3.0, rtol=1e-5)
    yy, xx = np.mgrid[:64, :64] - 31.5
    theta = np.arctan2(-yy, xx)
    img = (1 + np.cos(2 * theta)) * np.exp(-np.hypot(yy, xx) / 20)  # Friedel-symmetric
    rot = ndimage.rotate(img, 5 * grid.angle_step_deg, reshape=False, order=3)
    a, b = pm.apply(img[None])[0], pm.apply(rot[None])[0]
    np.testing.assert_allclose(np.roll(a, 5, axis=1)[3:-2], b[3:-2], atol=0.02 * a.max())
    # gather tables are the same matrix
    flat = img.reshape(-1)
    ell = (flat[pm.index] * pm.weight).sum(axis=1).reshape(a.shape)
    np.testing.assert_allclose(ell, a, rtol=1e-5, atol=1e-6)


def test_polar_map_masks_and_fills_the_gap():
    feats = PolarFeatures.build(PolarConfig())
    m = feats.map
    invalid = ~(np.asarray(pp.binned_mask()) > 0).reshape(-1)
    assert m.matrix[:, invalid].nnz == 0  # no weight on the hole or the gap
    assert m.filled.any() and not m.filled.all(axis=1).any()
    np.testing.assert_allclose(np.asarray(m.matrix.sum(axis=1)).ravel(), 1.0, rtol=1e-5)


def test_noise_vector_is_the_poisson_noise_energy():
    """``u @ λ`` equals the mean extra energy Poisson noise adds to the linear channel."""
    feats = PolarFeatures.build(PolarConfig(linear_weight=1.0))
    lam_full = simulate_frames(0, 1, seed=7, config=SimConfig(fractions=(1, 0, 0, 0)), noise=False)
    lam = lam_full.frames[0] * (3000 / lam_full.frames[0].sum())
    rng = np.random.default_rng(0)
    samples = rng.poisson(lam, (300, *lam.shape)).astype(np.float32)

    def energy(x):
        cells, _ = feats.polar(x)
        y = (cells.reshape(-1, feats.grid.n_angles) @ feats.dft).reshape(len(x), -1, 2, 16)
        y = y * feats.row_scale
        return np.einsum("nrck,nrck->n", y, y)

    excess = energy(samples).mean() - energy(lam[None])[0]
    _, noise = feats.polar(samples)
    assert noise.mean() == pytest.approx(excess, rel=0.15)
    b = pp.bin_frames(samples).mean(axis=0)  # what a frame's cleaned counts estimate
    assert float(b.reshape(-1) @ feats.noise_vector) == pytest.approx(excess, rel=0.15)


def test_distance_prefers_singles_over_other_classes():
    run = simulate_frames(0, 160, seed=21)
    single = np.flatnonzero(run.labels == 0)
    bank = build_bank(run.frames[single[:20]])
    rest = np.setdiff1d(np.arange(len(run)), single[:20])
    d = match_frames(bank.matcher(), run.frames[rest], batch=64).distance
    is_single = run.labels[rest] == 0
    # ROC-AUC as the probability that a single is closer than a non-single
    auc = (d[is_single][:, None] < d[~is_single][None, :]).mean()
    assert auc > 0.9


def test_bank_roundtrip(tmp_path, polar_bank, mixed_frames):
    path = save_bank(polar_bank, tmp_path / "bank.h5")
    with h5py.File(path, "r") as f:
        assert f.attrs["mode"] == "polar"
        assert json.loads(f.attrs["polar_config"]) == asdict(polar_bank.polar)
        grid = json.loads(f.attrs["polar_grid"])
        assert grid["n_angles"] == polar_bank.polar.n_angles
        assert "hot_abs" in json.loads(f.attrs["preprocessing"])
        assert f["frames"].shape == (N_TEMPLATES, *GEOM.shape)
    bank = load_bank(path)
    np.testing.assert_array_equal(bank.templates, polar_bank.templates)
    np.testing.assert_array_equal(bank.frames, polar_bank.frames)
    np.testing.assert_array_equal(bank.source_index, np.arange(N_TEMPLATES) * 3)
    assert bank.source_run == ["smooth.h5"] * N_TEMPLATES
    assert bank.geometry == GEOM and bank.polar == polar_bank.polar
    a = polar_bank.matcher().match(mixed_frames)
    b = bank.matcher().match(mixed_frames)
    np.testing.assert_array_equal(a.distance, b.distance)
    with pytest.raises(OutputError, match="exists"):
        save_bank(polar_bank, path)


def test_bruteforce_bank_roundtrip(tmp_path, smooth):
    bank = build_bank(
        smooth[0][:2], mode="bruteforce", bruteforce=BruteForceConfig(n_rotations=3, step_deg=60)
    )
    loaded = load_bank(save_bank(bank, tmp_path / "bf.h5"))
    assert loaded.mode == "bruteforce" and loaded.bruteforce.n_rotations == 3
    np.testing.assert_array_equal(loaded.templates, bank.templates)
    r = loaded.matcher().match(smooth[1][:2])
    assert r.index.dtype == np.int32 and set(r.angle_deg.tolist()) <= {0.0, 60.0, 120.0}


def test_clear_errors(tmp_path, smooth):
    with pytest.raises(InputDataError, match="no template frames"):
        build_bank(np.zeros((0, *GEOM.shape), np.float32))
    with pytest.raises(InputDataError, match=r"shape \(2, 100, 100\)"):
        build_bank(np.zeros((2, 100, 100), np.float32))
    with pytest.raises(InputDataError, match="indices"):
        build_bank(smooth[0][:2], source_index=[1, 2, 3])
    with pytest.raises(ConfigError, match="unknown template mode"):
        build_bank(smooth[0][:2], mode="fast")
    with pytest.raises(ConfigError, match="linear_weight"):
        PolarConfig(linear_weight=1.5)
    with pytest.raises(ConfigError, match="n_harmonics"):
        PolarConfig(n_harmonics=100)
    bank = build_bank(smooth[0][:2])
    with pytest.raises(InputDataError, match="shape"):
        bank.matcher().match(np.zeros((1, 10, 10), np.float32))
    not_bank = tmp_path / "frames.h5"
    with h5py.File(not_bank, "w") as f:
        f["data"] = np.zeros((2, 3, 3))
    with pytest.raises(InputDataError, match="not a template bank"):
        load_bank(not_bank)
    with pytest.raises(InputDataError, match="does not exist"):
        load_bank(tmp_path / "missing.h5")


# --- TensorFlow graph and ONNX ----------------------------------------------------------


@pytest.fixture(scope="module")
def tf_fn(polar_bank):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    pytest.importorskip("tensorflow")
    from trainer.model.inference_graph import template_function

    return template_function(polar_bank)


def _assert_same(out: dict, ref) -> None:
    np.testing.assert_array_equal(out["template_index"], ref.index)
    np.testing.assert_allclose(out["template_distance"], ref.distance, rtol=1e-4, atol=1e-6)
    assert angle_error(out["template_angle_deg"], ref.angle_deg).max() < 0.05


def test_tf_graph_equals_numpy(tf_fn, polar_bank, mixed_frames):
    import tensorflow as tf

    out = {k: v.numpy() for k, v in tf_fn(tf.constant(mixed_frames)).items()}
    assert out["template_index"].dtype == np.int32
    _assert_same(out, polar_bank.matcher().match(mixed_frames))


def test_tf_graph_from_binned_shares_the_cnn_binning(polar_bank, mixed_frames):
    pytest.importorskip("tensorflow")
    import tensorflow as tf

    from trainer.model import preprocess_graph as graph
    from trainer.templates.graph import make_template_matcher

    match = make_template_matcher(polar_bank)
    out = match.from_binned(graph.bin_frames(tf.constant(mixed_frames)))
    _assert_same({k: v.numpy() for k, v in out.items()}, polar_bank.matcher().match(mixed_frames))
    with pytest.raises(ConfigError, match="polar"):
        make_template_matcher(build_bank(mixed_frames[:1], mode="bruteforce"))


def test_onnx_export_matches_numpy(tmp_path, tf_fn, polar_bank, mixed_frames):
    tf2onnx = pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    import logging

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    path = tmp_path / "templates.onnx"
    tf2onnx.convert.from_function(
        tf_fn, input_signature=tf_fn.input_signature, opset=17, output_path=str(path)
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] not in (1, len(mixed_frames))  # dynamic batch
    names = [o.name for o in sess.get_outputs()]
    assert set(names) == {"template_distance", "template_index", "template_angle_deg"}
    ref = polar_bank.matcher().match(mixed_frames)
    for n in (len(mixed_frames), 3):
        out = dict(zip(names, sess.run(None, {"frames": mixed_frames[:n]}), strict=True))
        part = type(ref)(ref.distance[:n], ref.index[:n], ref.angle_deg[:n])
        _assert_same(out, part)
