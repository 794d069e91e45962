"""Model path: preprocessing parity, augmentation, training, ONNX export, bundles.

Real parts only: simulated frames, a real (tiny) Keras training, tf2onnx export, real
onnxruntime sessions, HDF5 files in tmp_path, and the shipped ``models/default`` bundle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

tf = pytest.importorskip("tensorflow")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from hitstream import frame_kernel as pp  # noqa: E402
from hitstream.bundle import load_bundle  # noqa: E402
from hitstream.errors import BundleError, ConfigError, InputDataError  # noqa: E402
from hitstream.geometry import FRAME_SHAPE, DetectorGeometry  # noqa: E402
from hitstream.simulate import SIM_CLASSES, simulate_run, write_run  # noqa: E402
from trainer.model import preprocess_graph as graph  # noqa: E402
from trainer.model.augment import (  # noqa: E402
    AugmentConfig,
    affine_transforms,
    augment_geometry,
    augment_photons,
    augmented_inputs,
    gap_fill_rows,
    transform_frames,
)
from trainer.model.cnn import build_model, count_macs, input_channels  # noqa: E402
from trainer.model.export import export_bundle  # noqa: E402
from trainer.model.inputs import model_layout  # noqa: E402
from trainer.model.train import (  # noqa: E402
    TrainConfig,
    choose_threshold,
    class_weights_for,
    classification_metrics,
    predict_probabilities,
    train_model,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "models" / "default"
FAST_BUNDLE = ROOT / "models" / "fast"
CLASSES = list(SIM_CLASSES)


def _session(path: Path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def frames():
    """Simulated frames with every class present."""
    run = simulate_run(40, seed=11)
    assert set(np.unique(run.labels)) == set(range(len(CLASSES)))
    return run


@pytest.fixture(scope="module")
def trained(frames):
    val = simulate_run(16, seed=12)
    cfg = TrainConfig(epochs=1, batch_size=8, seed=3)
    return train_model(
        frames.frames, frames.labels, CLASSES, val.frames, val.labels, cfg, progress=False
    )


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    metrics = {"validation": trained.metrics}
    return export_bundle(
        trained.model,
        out,
        name="tiny",
        classes=CLASSES,
        thresholds={"single": 0.6},
        training_summary={"test": True},
        metrics=metrics,
    )


def _corrupt(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[0, 10, 10] = np.nan
    x[0, 20, 30] = np.inf
    x[1, 40, 40] = -np.inf
    x[1, 50:60, 50:60] = -3.0
    x[2, 200, 200] = 5e4  # hot pixel
    x[3, 129, 128] = 1e3  # in the beam-stop hole
    return x


# --- preprocessing ----------------------------------------------------------------------


@pytest.mark.parametrize("coarsen", [1, 2])
def test_numpy_and_tensorflow_preprocessing_agree(frames, coarsen: int) -> None:
    x = _corrupt(frames.frames[:12])
    img_np, ph_np = pp.preprocess(x, coarsen=coarsen)
    img_tf, ph_tf = graph.preprocess(tf.constant(x), coarsen=coarsen)
    assert img_np.shape == (12, 130 // coarsen, 128 // coarsen, len(pp.CHANNELS))
    assert np.isfinite(img_np).all()
    np.testing.assert_allclose(img_tf.numpy(), img_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ph_tf.numpy(), ph_np, rtol=1e-5, atol=1e-3)


def _adversarial(seed: int) -> np.ndarray:
    """Frames no simulator makes: every photon level from dark to saturated, read noise,
    NaN/±Inf, huge and negative values, hot pixels on the border and in the corners."""
    rng = np.random.default_rng(seed)
    n, (h, w) = 10, FRAME_SHAPE
    x = rng.poisson(rng.uniform(0, 3, (n, 1, 1)) ** 3, (n, h, w)).astype(np.float32)
    x += rng.normal(0, rng.uniform(0, 0.5), (n, h, w)).astype(np.float32)
    for k in range(n):
        m = rng.integers(1, 200)
        idx = (rng.integers(0, h, m), rng.integers(0, w, m))
        x[k][idx] = rng.choice([np.nan, np.inf, -np.inf, 1e7, -1e7, 5e3, -40.0], m)
    x[:, [0, 0, -1, -1, 0, -1], [0, -1, 0, -1, 100, 100]] = 4e3  # corners and edges
    x[1] = 0.0
    x[2] = np.nan
    return x


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_numpy_kernel_and_tensorflow_twin_agree_on_adversarial_frames(seed: int) -> None:
    x = _adversarial(seed)
    b_np = pp.bin_frames(x)
    b_tf = graph.bin_frames(tf.constant(x)).numpy()
    assert np.isfinite(b_np).all() and (b_np >= 0).all()
    # a bin next to a saturated one (PIXEL_MAX = 1e6) is capped by 9 × mean − bin, which
    # cancels in float32: both twins round there, by up to a few ulp of 1e6 (0.0625)
    np.testing.assert_allclose(b_tf, b_np, rtol=1e-5, atol=0.2)
    np.testing.assert_allclose(pp.cap_hot(pp.bin_clean(x)), b_np, rtol=1e-6)
    img_np, ph_np = pp.preprocess(x, details=True)
    img_tf, ph_tf = graph.preprocess(tf.constant(x), details=True)
    # the same rounding, carried into the channels of those bins (relative 2e-3 at most)
    np.testing.assert_allclose(img_tf.numpy(), img_np, rtol=5e-3, atol=2e-3)
    np.testing.assert_allclose(ph_tf.numpy(), ph_np, rtol=1e-5, atol=1.0)


def test_detail_channels_agree_and_stay_finite(frames) -> None:
    x = _corrupt(frames.frames[:12])
    img_np, ph_np = pp.preprocess(x, details=True)
    img_tf, ph_tf = graph.preprocess(tf.constant(x), details=True)
    assert img_np.shape == (12, 130, 128, len(pp.CHANNELS) + len(pp.DETAIL_CHANNELS))
    np.testing.assert_allclose(ph_tf.numpy(), ph_np, rtol=1e-5, atol=1e-3)
    assert np.isfinite(img_np).all()
    np.testing.assert_allclose(img_tf.numpy(), img_np, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ph_np, pp.preprocess(x)[1])  # photons do not change
    np.testing.assert_array_equal(img_np[..., :2], pp.preprocess(x)[0])
    b = pp.bin_frames(x)
    assert (np.abs(img_np[..., 2:]) <= np.sqrt(b)[..., None] + 1e-5).all()  # hot pixels tamed
    assert (img_np[:, pp.binned_mask() == 0, 2:] == 0).all()
    with pytest.raises(ConfigError, match="coarsen"):
        pp.preprocess(x, coarsen=2, details=True)


def test_detail_channels_keep_fringes_that_binning_cancels() -> None:
    """Fringes 4 pixels apart at phase π/4: every 2×2 bin holds the same count, so the
    binned image has no fringe at all; the row details carry it, alternating bin by bin."""
    g = DetectorGeometry()
    rows = np.arange(g.shape[0], dtype=np.float64)
    fringe = 50.0 * (1.0 + np.cos(np.pi * rows / 2 + np.pi / 4))
    x = np.broadcast_to(fringe[:, None], g.shape).astype(np.float32)[None]
    img, _ = pp.preprocess(x, details=True)
    valid = pp.binned_mask() > 0
    level, row_detail = img[0, ..., 0], img[0, ..., 2]
    assert np.ptp(level[valid]) < 1e-3  # binning lost the fringe
    upper = row_detail[:60, 10]
    assert np.abs(upper).min() > 5.0  # ±141 photons of detail over sqrt(~200)
    assert (np.sign(upper[1:]) == -np.sign(upper[:-1])).all()
    assert np.abs(img[0, ..., 3:][valid]).max() < 1e-3  # no column or diagonal structure


def test_preprocessing_cleans_bad_pixels() -> None:
    g = DetectorGeometry()
    empty = np.zeros((1, *g.shape), np.float32)
    hot = empty.copy()
    hot[0, 30, 30] = 1e5
    hole = empty.copy()
    hole[0, 129, 128] = 1e3
    bad = empty.copy()
    bad[0, 100, 100] = np.nan
    bad[0, 101, 100] = np.inf
    for x, most in ((hot, pp.HOT_ABS), (hole, 0.0), (bad, 0.0)):
        img, photons = pp.preprocess(x)
        assert np.isfinite(img).all()
        assert photons[0] <= most


def test_read_noise_does_not_make_photons() -> None:
    """Zero-mean read noise on an empty frame must not add up to a 'hit' after clipping."""
    g = DetectorGeometry()
    rng = np.random.default_rng(5)
    for sigma, most in ((0.05, 1.0), (0.1, 40.0)):
        noise = rng.normal(0.0, sigma, (4, *g.shape)).astype(np.float32)
        _, photons = pp.preprocess(noise)
        assert photons.max() <= most, (sigma, photons)
    plain = rng.normal(0.0, 0.1, (1, *g.shape)).astype(np.float32)
    biased = np.clip(plain[:, :258, :256].reshape(1, 129, 2, 128, 2).sum((2, 4)), 0, None)
    assert biased.sum() > 1000  # what clipping alone would count


def test_masks_follow_geometry() -> None:
    g = DetectorGeometry()
    np.testing.assert_array_equal(pp.detector_mask(g), g.valid_pixels().astype(np.float32))
    b = pp.binned_mask(g)
    assert b.shape == pp.binned_shape(g) == (130, 128)
    assert not b[64:66].any() and b[:64].any() and b[66:].any()  # gap rows 128..131
    assert b[63, 64] == 0 and b[61, 64] == 1 and b[0, 0] == 1  # hole edge, corner valid


# --- augmentation -----------------------------------------------------------------------


def test_augmentation_is_seeded_and_respects_the_mask(frames) -> None:
    x = tf.constant(frames.frames[:6])
    a = augment_geometry(x, tf.constant([1, 2])).numpy()
    b = augment_geometry(x, tf.constant([1, 2])).numpy()
    c = augment_geometry(x, tf.constant([1, 3])).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (a[:, ~DetectorGeometry().valid_pixels()] == 0).all()
    assert (a >= 0).all()
    images = augmented_inputs(x, tf.constant([4, 5])).numpy()
    assert images.shape == (6, 130, 128, 2) and np.isfinite(images).all()
    fine = augmented_inputs(x, tf.constant([4, 5]), details=True).numpy()
    assert fine.shape == (6, 130, 128, 5) and np.isfinite(fine).all()
    assert np.abs(fine[..., 2:]).max() > 0


def test_a_half_turn_about_the_beam_centre_is_exact(frames) -> None:
    """Turning by 180° about the beam centre (129.5, 128) maps pixels onto pixels."""
    g = DetectorGeometry()
    x = frames.frames[:2]
    one, zero = tf.ones([2]), tf.zeros([2])
    t = affine_transforms(tf.fill([2], np.pi), one, one, tf.zeros([2, 2]), g.center_px)
    turned = transform_frames(tf.constant(x), t, g.shape).numpy()
    np.testing.assert_array_equal(turned, x[:, ::-1, ::-1])
    same = transform_frames(
        tf.constant(x), affine_transforms(zero, one, one, tf.zeros([2, 2]), g.center_px), g.shape
    ).numpy()
    np.testing.assert_array_equal(same, x)


def test_photon_thinning_scales_counts(frames) -> None:
    b = pp.bin_clean(frames.frames[:20])
    cfg = AugmentConfig(scale_range=(0.5, 0.5), background_share=0.0, hot_pixels=0.0)
    y = augment_photons(tf.constant(b), tf.constant([5, 6]), config=cfg).numpy()
    assert np.all(y <= b + 1e-4)  # thinning never adds photons
    assert 0.45 < y.sum() / b.sum() < 0.55
    more = AugmentConfig(
        scale_range=(1.0, 1.0),
        background_share=1.0,
        background_photons=(50.0, 50.0),
        hot_pixels=0.0,
    )
    z = augment_photons(tf.constant(b), tf.constant([5, 6]), config=more).numpy()
    assert 35 < (z.sum() - b.sum()) / 20 < 65  # about 50 extra photons per frame
    assert (z[:, pp.binned_mask() == 0] == 0).all()
    raw = np.maximum(frames.frames[:20], 0) * pp.detector_mask()  # the same on raw pixels
    y = augment_photons(tf.constant(raw), tf.constant([5, 6]), config=cfg, pixels=True).numpy()
    assert y.shape == raw.shape and np.all(y <= raw + 1e-4)
    assert 0.45 < y.sum() / raw.sum() < 0.55
    z = augment_photons(tf.constant(raw), tf.constant([5, 6]), config=more, pixels=True).numpy()
    assert 35 < (z.sum() - raw.sum()) / 20 < 65
    assert (z[:, pp.detector_mask() == 0] == 0).all()


def test_resampled_counts_have_the_binomial_mean_and_variance() -> None:
    """Thinning draws on lit pixels only, single photons as Bernoulli draws: each count c
    must keep c·s photons on average with variance c·s(1−s); duplication adds c(s−1)."""
    from trainer.model.augment import resample_photons

    counts = np.zeros((4, 64, 64), np.float32)
    counts[:, :, :16], counts[:, :, 16:32], counts[:, :, 32:48] = 1.0, 3.0, 40.0
    counts[:, :, 48:] = 0.25  # a fraction below one photon scales, it is not drawn
    for s in (0.3, 1.6):
        y = resample_photons(tf.constant(counts), tf.fill([4], s), tf.constant([7, 8])).numpy()
        p = s if s <= 1 else s - 1
        for c, cols in ((1.0, slice(0, 16)), (3.0, slice(16, 32)), (40.0, slice(32, 48))):
            drawn = y[:, :, cols] - (0 if s <= 1 else c)
            assert abs(drawn.mean() - c * p) < 0.05 * c * p + 0.02, (s, c, drawn.mean())
            assert abs(drawn.var() / (c * p * (1 - p)) - 1) < 0.1, (s, c, drawn.var())
        np.testing.assert_allclose(y[:, :, 48:], 0.25 * s, rtol=1e-6)


def test_extra_photons_follow_their_distribution_and_miss_masked_pixels() -> None:
    """The inverse-CDF sampler of background photons draws every bin in proportion to its
    weight and never a bin of weight zero; hot pixels land on valid pixels only."""
    from trainer.model.augment import _cdf, _sample_bins

    w = np.array([0.0, 1.0, 0.0, 3.0, 2.0, 0.0, 4.0, 0.0], np.float64)
    u = tf.random.stateless_uniform([200_000], tf.constant([1, 2]))
    idx = _sample_bins(_cdf(w / w.sum()), u, int(np.flatnonzero(w).max())).numpy()
    share = np.bincount(idx, minlength=len(w)) / len(idx)
    np.testing.assert_allclose(share, w / w.sum(), atol=0.005)
    assert share[w == 0].sum() == 0
    g = DetectorGeometry()
    cfg = AugmentConfig(scale_range=(1.0, 1.0), background_share=0.0, hot_pixels=3.0,
                        hot_pixel_photons=(100.0, 100.0))  # fmt: skip
    zero = tf.zeros([64, *g.shape])
    hot = augment_photons(zero, tf.constant([3, 4]), g, cfg, pixels=True).numpy()
    lit = hot > 0
    assert 2.0 < lit.sum() / 64 < 3.6  # Poisson(3) capped at 4 per frame
    assert not lit[:, ~g.valid_pixels()].any()


def test_read_noise_is_independent_and_on_a_share_of_frames() -> None:
    """Each noisy frame takes its own window of the normal stream: zero mean, σ within the
    configured range, no correlation between neighbours or between frames."""
    from trainer.model.augment import add_read_noise

    cfg = AugmentConfig(read_noise_share=0.5, read_noise_photons=(0.05, 0.15))
    out = add_read_noise(tf.zeros([200, 64, 64]), tf.constant([9, 10]), cfg).numpy()
    noisy = out.reshape(200, -1).std(axis=1) > 0
    assert 0.38 < noisy.mean() < 0.62
    sd = out[noisy].reshape(noisy.sum(), -1).std(axis=1)
    assert sd.min() > 0.045 and sd.max() < 0.16 and sd.max() - sd.min() > 0.05
    z = out[noisy] / sd[:, None, None]
    assert abs(z.mean()) < 0.01
    assert abs(np.mean(z[:, :, 1:] * z[:, :, :-1])) < 0.01  # neighbours
    assert abs(np.mean(z[0] * z[1])) < 0.05  # two frames
    again = add_read_noise(tf.zeros([200, 64, 64]), tf.constant([9, 10]), cfg).numpy()
    np.testing.assert_array_equal(out, again)


def test_mask_augmentation_widens_hole_and_gap_on_a_share_of_frames() -> None:
    from trainer.model.augment import augment_mask

    g = DetectorGeometry()
    ones = tf.ones([64, *g.shape])
    cfg = AugmentConfig(mask_share=0.5, max_hole_radius_px=16.0, max_gap_rows=14.0, cross_share=0.0)
    m = augment_mask(ones, tf.constant([3, 4]), g, cfg).numpy()
    again = augment_mask(ones, tf.constant([3, 4]), g, cfg).numpy()
    np.testing.assert_array_equal(m, again)  # seeded
    cy, cx = g.center_px
    yy, xx = np.mgrid[: g.shape[0], : g.shape[1]]
    r = np.hypot(yy - cy, xx - cx)
    changed = (m[:, g.valid_pixels()] == 0).any(axis=1)  # lost pixels the geometry keeps
    assert 12 <= changed.sum() <= 48  # about half of the frames
    assert (m[:, (r >= 16.5) & (np.abs(yy - cy) >= 7.5)] == 1).all()  # never beyond the limits
    assert (m[~changed][:, g.valid_pixels()] == 1).all()
    assert (m[changed][:, ~g.valid_pixels()] == 0).all()  # the hole and gap grow, never shrink
    off = AugmentConfig(mask_share=0.0, cross_share=0.0)
    np.testing.assert_array_equal(augment_mask(ones, tf.constant([3, 4]), g, off).numpy(), 1)


def test_cross_gaps_cut_bands_through_the_centre_on_a_share_of_frames() -> None:
    from trainer.model.augment import augment_mask

    g = DetectorGeometry()
    ones = tf.ones([64, *g.shape])
    cfg = AugmentConfig(mask_share=0.0, cross_share=0.5, max_cross_px=30.0, cross_offset_px=5.0)
    m = augment_mask(ones, tf.constant([5, 6]), g, cfg).numpy()
    cy, cx = g.center_px
    cut = (m == 0).any(axis=(1, 2))
    assert 12 <= cut.sum() <= 48  # about half of the frames
    for frame in m[cut]:
        rows = np.flatnonzero((frame == 0).all(axis=1))  # the horizontal band: whole rows
        cols = np.flatnonzero((frame == 0).all(axis=0))
        for band, c in ((rows, cy), (cols, cx)):
            if band.size:  # contiguous, within width and offset limits
                assert band.max() - band.min() + 1 == band.size <= 30
                assert abs((band.max() + band.min()) / 2 - c) <= 5.5
    assert (m[~cut] == 1).all()


def test_gap_rows_are_filled_from_their_neighbours() -> None:
    rows = gap_fill_rows(DetectorGeometry())
    assert rows[128] == 127 and rows[129] == 126 and rows[130] == 133 and rows[131] == 132
    assert rows[0] == 0 and rows[259] == 259


# --- architectures, training, metrics ---------------------------------------------------


def test_architectures_and_their_cost() -> None:
    compact = build_model("compact", (130, 128, 2), 4)
    fast = build_model("fast", (65, 64, 2), 4)
    fine = build_model("fine", (130, 128, input_channels("fine")), 4)
    seed = build_model("seed", (130, 128, 2), 4)
    assert compact.output_shape == fast.output_shape == seed.output_shape == (None, 4)
    assert fine.output_shape == (None, 4) and model_layout(fine).details
    assert not model_layout(compact).details and not model_layout(compact).background
    with_bg = build_model("fine", (130, 128, input_channels("fine", background=True)), 4)
    assert model_layout(with_bg).background and model_layout(with_bg).details
    assert count_macs(fast) < count_macs(compact) / 2
    assert count_macs(compact) < count_macs(fine) < 10_000_000
    assert count_macs(compact) < 5_000_000 < 50_000_000 < count_macs(seed)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet", (130, 128, 2), 4)


def test_tiny_training_returns_a_model(trained, frames) -> None:
    assert trained.model.output_shape == (None, len(CLASSES))
    assert len(trained.history["loss"]) == 1 and "val_loss" in trained.history
    assert trained.val_probabilities.shape == (16, len(CLASSES))
    assert set(trained.metrics) >= {"accuracy", "per_class", "confusion"}
    p = predict_probabilities(trained.model, frames.frames[:5])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_metrics_and_threshold() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 3])
    p = np.full((8, 4), 0.05)
    p[np.arange(8), labels] = 0.85
    p[4] = [0.7, 0.2, 0.05, 0.05]  # a multiple that looks single, less sure than the singles
    m = classification_metrics(p, labels, CLASSES, {"single": 0.8})
    assert m["accuracy"] == pytest.approx(7 / 8)
    assert m["confusion"][1][0] == 1
    assert m["keep"]["single"] == {"threshold": 0.8, "precision": 1.0, "recall": 1.0, "kept": 4}
    t = choose_threshold(p, labels, 0, target_precision=0.97)
    assert 0.7 < t <= 0.85
    np.testing.assert_allclose(class_weights_for(labels, 4), [0.5, 1.0, 2.0, 2.0])


# --- export and bundles -----------------------------------------------------------------


def run_map(frames) -> np.ndarray:
    """(1, H, W) a background map for the tiny bundle (what a run's estimate looks like)."""
    from hitstream.background import estimate_run_background

    return estimate_run_background(frames.frames).map[None] + np.float32(0.01)


def test_bundle_manifest_matches_the_graph(bundle: Path) -> None:
    b = load_bundle(bundle, verify=True)
    assert b.background_input == "background"  # trained with the run's background
    assert b.classes == tuple(CLASSES) and b.thresholds == {"single": 0.6}
    assert set(b.manifest["files"]) >= {
        "model.onnx",
        "model.keras",
        "evaluation.json",
        "confusion.png",
    }
    s = _session(b.model_path)
    inp, bg = s.get_inputs()
    assert inp.name == b.input_name == "frames" and bg.name == "background"
    assert inp.shape[1:] == bg.shape[1:] == [260, 257] and not isinstance(inp.shape[0], int)
    outs = {o.name: o.shape for o in s.get_outputs()}
    assert set(outs) == set(b.manifest["outputs"]) == {"probabilities", "photons", "excess_photons"}
    assert (
        outs["probabilities"][1]
        == len(CLASSES)
        == b.manifest["outputs"]["probabilities"]["shape"][1]
    )
    assert json.loads((bundle / "evaluation.json").read_text())["validation"]["frames"] == 16


def test_dynamic_batch(bundle: Path, frames) -> None:
    s = _session(bundle / "model.onnx")
    m = run_map(frames)
    one = s.run(None, {"frames": frames.frames[:1], "background": m})
    seven = s.run(None, {"frames": frames.frames[:7], "background": m})
    per_frame = s.run(None, {"frames": frames.frames[:7], "background": np.repeat(m, 7, 0)})
    names = [o.name for o in s.get_outputs()]
    p1, p7 = (dict(zip(names, r, strict=True))["probabilities"] for r in (one, seven))
    assert p1.shape == (1, 4) and p7.shape == (7, 4)
    np.testing.assert_allclose(p7[:1], p1, atol=1e-6)
    pf = dict(zip(names, per_frame, strict=True))["probabilities"]
    np.testing.assert_allclose(pf, p7, atol=1e-6)  # one map broadcast = one map per frame


def test_onnx_matches_keras_and_numpy(bundle: Path, trained, frames) -> None:
    from trainer.data.backgrounds import RunBackgrounds

    x = frames.frames  # all four classes
    m = run_map(frames)
    bgs = RunBackgrounds(m, np.zeros(len(x), np.int64))
    s = _session(bundle / "model.onnx")
    names = [o.name for o in s.get_outputs()]
    out = dict(zip(names, s.run(None, {"frames": x, "background": m}), strict=True))
    p_keras = predict_probabilities(trained.model, x, backgrounds=bgs)
    assert np.abs(out["probabilities"] - p_keras).max() <= 1e-4
    _, photons = pp.preprocess(x)
    np.testing.assert_allclose(out["photons"], photons, rtol=1e-5)
    b = pp.bin_frames(x)
    excess = pp.excess_bins(b, pp.background_bins(m)[1])[1]
    np.testing.assert_allclose(out["excess_photons"], excess, rtol=1e-4, atol=1e-2)
    bad = _corrupt(x[:4])  # NaN in the batch: the graph's NaN branch runs
    bad_map = m.copy()
    bad_map[0, 30, 30] = np.nan  # and in the map
    p_bad, ph_bad = s.run(["probabilities", "photons"], {"frames": bad, "background": bad_map})
    assert np.isfinite(p_bad).all()
    np.testing.assert_allclose(ph_bad, pp.preprocess(bad)[1], rtol=1e-5)
    p_keras_bad = predict_probabilities(
        trained.model, bad, backgrounds=RunBackgrounds(bad_map, np.zeros(4, np.int64))
    )
    assert np.abs(p_bad - p_keras_bad).max() <= 1e-4


def test_export_never_overwrites_without_force(bundle: Path, trained) -> None:
    before = (bundle / "manifest.json").read_bytes()
    with pytest.raises(BundleError, match="already exists"):
        export_bundle(trained.model, bundle, name="tiny", classes=CLASSES)
    assert (bundle / "manifest.json").read_bytes() == before
    export_bundle(trained.model, bundle, name="tiny2", classes=CLASSES, force=True)
    assert load_bundle(bundle).name == "tiny2"
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]


def test_train_cli_reads_hdf5_runs(tmp_path: Path, frames) -> None:
    from trainer.cli import main
    from trainer.data.labelled import load_labelled_frames

    path = write_run(tmp_path / "run1.h5", frames)
    data = load_labelled_frames([path])
    assert data.frames.shape == frames.frames.shape and data.classes == tuple(CLASSES)
    np.testing.assert_array_equal(data.labels, frames.labels)
    with pytest.raises(InputDataError, match="no dataset 'nope'"):
        load_labelled_frames([path], dataset="nope")
    out = tmp_path / "models" / "cli"
    rc = main(
        [
            "train",
            str(path),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--no-augment",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    b = load_bundle(out)
    assert b.name == "cli" and "single" in b.thresholds
    assert main(["train", str(path), "--epochs", "1", "--out", str(out)]) == 2  # exists


# --- the shipped default bundle ---------------------------------------------------------


@pytest.mark.parametrize(
    ("bundle", "max_macs", "templates"),
    [(DEFAULT_BUNDLE, 11_000_000, True), (FAST_BUNDLE, 1_500_000, False)],
    ids=["default", "fast"],
)
def test_shipped_bundles_classify_a_fresh_run(bundle: Path, max_macs: int, templates: bool) -> None:
    b = load_bundle(bundle, verify=True)
    assert b.classes == tuple(CLASSES) and b.keep_classes == ("single",)
    assert b.manifest["model"]["macs_per_frame"] < max_macs
    assert ("template_distance" in b.manifest["outputs"]) == templates
    run = simulate_run(200, seed=424242)  # a seed no build uses
    s = _session(b.model_path)
    p = s.run(["probabilities"], b.feed(run.frames))[0]
    accuracy = float(np.mean(p.argmax(axis=1) == run.labels))
    assert accuracy >= 0.9, accuracy
    bad = s.run(None, b.feed(_corrupt(run.frames[:4])))  # NaN, ±Inf, hot pixels
    assert all(np.isfinite(v).all() for v in bad)


@pytest.mark.parametrize(
    ("details", "coarsen", "shot"),
    [(True, 1, False), (False, 1, False), (False, 2, True), (True, 1, True)],
)
def test_augmentation_that_changes_nothing_is_the_exported_preprocessing(
    details: bool, coarsen: int, shot: bool
) -> None:
    """Training sees what serving sees: with every augmentation off, the training pipeline's
    inputs (frames with the run's background map, detector offsets that go negative) equal
    the exported graph's preprocessing, channel for channel."""
    from hitstream.simulate import BeamlineConfig, SimConfig, expected_empty_frame, simulate_frames
    from trainer.model.augment import AugmentConfig, augmented_inputs

    cfg = SimConfig(beamline=BeamlineConfig.realistic(), frames_per_run=2)
    run = simulate_frames(0, 6, 3, cfg)
    assert (run.frames < 0).any() or cfg.beamline.common_mode[1] > 0
    maps = np.stack([expected_empty_frame(3, i, cfg) for i in range(6)])
    noop = AugmentConfig(
        rotate=False, mirror=False, shift_px=0.0, zoom_range=(1.0, 1.0), scale_range=(1.0, 1.0),
        background_share=0.0, hot_pixels=0.0, read_noise_share=0.0, mask_share=0.0,
        cross_share=0.0,
    )  # fmt: skip
    x, m = tf.constant(run.frames), tf.constant(maps)
    a = augmented_inputs(x, tf.constant([1, 2]), cfg.geometry, noop, coarsen, details, m, shot)
    b = graph.preprocess(x, cfg.geometry, coarsen, details, m, shot)[0]
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
    c = pp.preprocess(run.frames, cfg.geometry, coarsen, details, maps, shot)[0]
    np.testing.assert_allclose(c, b.numpy(), rtol=1e-4, atol=2e-4)  # the numpy twin


def test_shot_scale_follows_the_shots_background_and_not_its_hit() -> None:
    """Step 7: empty shots at 0.6× and 1.4× the run's background get their own scale; a
    bright hit on a shot at 1× barely moves it (it lights a few rings of 13); a run the
    ring sums and median are the same in the graph."""
    from hitstream.simulate import SimConfig, simulate_frames

    rng = np.random.default_rng(5)
    g = DetectorGeometry()
    yy, xx = np.mgrid[: g.shape[0], : g.shape[1]]
    r = np.hypot(yy - g.center_px[0], xx - g.center_px[1]) + 3.0
    bg = (0.02 + 2.0 * (r / 10.0) ** -2.5).astype(np.float32)  # low-q excess, 0.05 ph/pixel
    bg *= g.valid_pixels()
    levels = np.array([0.6, 1.0, 1.4, 1.0], np.float32)
    frames = rng.poisson(bg[None] * levels[:, None, None]).astype(np.float32)
    hit = simulate_frames(0, 8, 11, SimConfig(photons=(3000.0, 3000.0)))
    frames[3] += hit.frames[int(np.flatnonzero(hit.labels == 0)[0])]
    binned = pp.bin_frames(frames)
    beta = pp.background_bins(bg[None])[1]
    s = pp.fit_shot_scale(binned, beta)[:, 0, 0]
    np.testing.assert_allclose(s[:3], levels[:3], atol=0.06)
    assert abs(s[3] - 1.0) < 0.1  # the whole-frame ratio would say ~1.5 here
    s_tf = graph.fit_shot_scale(tf.constant(binned), tf.constant(beta)).numpy()[:, 0, 0]
    np.testing.assert_allclose(s_tf, s, rtol=1e-5)
    assert pp.shot_rings().sum() == (pp.binned_mask() > 0).sum()  # each valid bin in one ring


def test_a_shot_model_says_so_in_its_name_and_keeps_it(tmp_path: Path) -> None:
    import keras

    from trainer.model.cnn import build_model
    from trainer.model.inputs import layout_of, model_layout

    assert layout_of("fine", True, shot_scale=True).model_name == "fine-shot"
    assert not layout_of("fine-shot", background=False).shot_scale  # needs a background
    assert not layout_of("fine", True).shot_scale  # earlier models keep their input
    model = build_model("fast-shot", (65, 64, 3), 4)
    path = tmp_path / "m.keras"
    model.save(path)
    layout = model_layout(keras.models.load_model(path, compile=False))
    assert layout.architecture == "fast" and layout.shot_scale and layout.background


def test_second_stage_trains_on_the_shot_input_and_the_graph_fits_the_shot(
    frames, tmp_path: Path
) -> None:
    """build-default's second stage: the trained network, renamed ``fine-shot``, trained on
    with each shot's fitted level; its ONNX graph (ring sums, median by TopK) agrees with
    Keras and records the input in the manifest."""
    from trainer.data.backgrounds import RunBackgrounds
    from trainer.model.shot_stage import continue_on_shot_input

    val = simulate_run(16, seed=12)
    first = train_model(
        frames.frames, frames.labels, CLASSES, val.frames, val.labels,
        TrainConfig(epochs=1, batch_size=8, seed=3), progress=False,
    )  # fmt: skip
    m = run_map(frames)
    bgs, val_bgs = (RunBackgrounds(m, np.zeros(n, np.int64)) for n in (40, 16))
    second = continue_on_shot_input(
        first, frames.frames, frames.labels, CLASSES, val.frames, val.labels, bgs, val_bgs,
        epochs=1, progress=False,
    )  # fmt: skip
    assert second.model.name == "fine-shot" and second.config.shot_scale
    assert len(second.history["loss"]) == 2  # both stages
    path = export_bundle(second.model, tmp_path / "shot", name="shot", classes=CLASSES)
    b = load_bundle(path, verify=True)
    assert b.manifest["preprocessing"]["shot_scale"] is True
    assert b.manifest["model"]["architecture"] == "fine-shot"
    x = frames.frames
    bright = m * np.float32(1.5)  # a run map that the shots are not: the scale must follow
    for run_map_ in (m, bright):
        p = _session(b.model_path).run(["probabilities"], {"frames": x, "background": run_map_})[0]
        p_keras = predict_probabilities(
            second.model, x, backgrounds=RunBackgrounds(run_map_, np.zeros(len(x), np.int64))
        )
        assert np.abs(p - p_keras).max() <= 1e-4
