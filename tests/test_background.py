"""The run background estimate (hitstream.background) and the lit-pixel baseline
(hitstream.hitfinder), on frames whose background is known."""

from __future__ import annotations

import numpy as np
import pytest

from hitstream.background import (
    BackgroundConfig,
    RunBackground,
    estimate_run_background,
)
from hitstream.background_shape import (
    RINGS,
    ring_layout,
    ring_profiles,
    select_empty,
    shape_scores,
)
from hitstream.errors import ConfigError, InputDataError
from hitstream.hitfinder import expected_lit, find_hits, hit_scores, lit_pixels

SHAPE = (64, 60)


def truth_map() -> np.ndarray:
    """A steep low-q background with a streak: what a run's empty frames hold on average."""
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    r = np.hypot(yy - 31.5, xx - 29.5)
    m = 0.02 + 0.8 * (1 + (r / 4.0) ** 2) ** -1.5
    m[31:33, :] += 0.3  # a streak from an aperture
    return m.astype(np.float32)


def frames(
    rng: np.random.Generator, n: int, hit_rate: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson frames of the truth map; a share of them carry a bright 'hit' as well."""
    x = rng.poisson(truth_map(), (n, *SHAPE)).astype(np.float32)
    hits = rng.random(n) < hit_rate
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    blob = 3.0 * np.exp(-np.hypot(yy - 31.5, xx - 29.5) / 8.0)
    x[hits] += rng.poisson(blob, (int(hits.sum()), *SHAPE))
    return x, hits


def blocks(m: np.ndarray, k: int = 4) -> np.ndarray:
    """k×k block sums: the scale at which the estimate is compared (per pixel it is noisy)."""
    h, w = m.shape[0] // k * k, m.shape[1] // k * k
    return m[:h, :w].reshape(h // k, k, w // k, k).sum(axis=(1, 3))


def close_to_truth(m: np.ndarray, tol: float) -> bool:
    truth = truth_map()
    rel = np.abs(blocks(m) - blocks(truth)) / blocks(truth)
    return bool(np.median(rel) < tol and abs(m.sum() / truth.sum() - 1) < tol / 3)


def test_estimate_converges_to_the_empty_frames_mean_despite_hits() -> None:
    rng = np.random.default_rng(1)
    est = RunBackground(SHAPE, BackgroundConfig(warmup_frames=100, warm_share=1.0))
    assert not est.snapshot.warm and est.snapshot.version == 0
    for _ in range(200):
        x, _ = frames(rng, 32)
        snap = est.update(x)
    assert snap.warm and snap.version > 0
    truth = truth_map()
    assert close_to_truth(snap.map, 0.06)  # mean of the empty frames, hits left out
    assert snap.level == pytest.approx(truth.mean(), rel=0.01)  # no selection bias
    naive = x.mean(axis=0)  # what including the hits would give
    assert not close_to_truth(naive, 0.3)
    assert not snap.map.flags.writeable


def busy_run(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A run with more hits than empty frames (70 %), dim and bright ones, and a shot level
    that jitters by 20 %: the totals' densest half is mostly hits."""
    jitter = rng.lognormal(0.0, 0.2, n)[:, None, None]
    x = rng.poisson(truth_map()[None] * jitter).astype(np.float32)
    hits = rng.random(n) < 0.7
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    blob = np.exp(-np.hypot(yy - 31.5, xx - 29.5) / 6.0)
    gain = rng.uniform(0.5, 3.0, int(hits.sum()))[:, None, None]
    x[hits] += rng.poisson(blob[None] * gain).astype(np.float32)
    return x, hits


def test_more_hits_than_empty_frames_are_told_apart_by_their_shape() -> None:
    rng = np.random.default_rng(11)
    x, hits = busy_run(rng, 1500)
    truth = truth_map() * np.float32(np.exp(0.02))  # the jitter's mean
    by_totals = estimate_run_background(x, config=BackgroundConfig(shape_select=False)).map
    by_shape = estimate_run_background(x)
    center = (slice(27, 36), slice(25, 34))  # where the hits are
    excess = lambda m: m[center].sum() / truth[center].sum() - 1  # noqa: E731
    assert excess(by_totals) > 0.15  # the dim hits in the densest half of the totals
    assert abs(excess(by_shape.map)) < 0.04
    assert by_shape.frames == pytest.approx((~hits).sum(), rel=0.1)
    cfg = BackgroundConfig(warmup_frames=100, publish_every_frames=50, warm_share=1.0)
    live = RunBackground(SHAPE, cfg)
    for i in range(0, len(x), 16):
        snap = live.update(x[i : i + 16])
    assert snap.warm and abs(excess(snap.map)) < 0.08


def test_ring_profiles_and_shape_scores() -> None:
    rng = np.random.default_rng(12)
    valid = np.ones(SHAPE, bool)
    valid[:, :3] = False
    layout = ring_layout(valid, (31.5, 29.5))
    x, hits = busy_run(rng, 64)
    x[0, 5, 5] = np.nan
    p = ring_profiles(x, layout)
    assert p.shape == (64, RINGS) and np.isfinite(p).all()
    np.testing.assert_allclose(p[1:].sum(axis=1), (x[1:] * valid).sum(axis=(1, 2)), rtol=1e-5)
    scores = shape_scores(p, ring_profiles(truth_map()[None], layout)[0])
    assert np.median(scores[~hits]) < 2.5 < np.median(scores[hits])
    accepted, _ = select_empty(p, share=0.15, z_max=4.0)
    assert accepted.sum() >= 0.15 * 64 and hits[accepted].mean() < 0.2
    mean = truth_map()
    mean[40, 40] = 50.0  # a hot pixel: its photons do not follow the shot's level
    layout = ring_layout(valid, (31.5, 29.5), mean)
    assert 40 * SHAPE[1] + 40 not in set(layout.order.tolist())
    assert len(layout.order) == valid.sum() - 1


def test_warm_up_publishes_every_batch_then_by_contribution() -> None:
    rng = np.random.default_rng(2)
    cfg = BackgroundConfig(warmup_frames=40, max_frames_per_update=8, publish_every_frames=100)
    est = RunBackground(SHAPE, cfg)
    versions = []
    for _ in range(60):
        versions.append(est.update(frames(rng, 8, hit_rate=0.0)[0]).version)
    # during warm-up (≤ 8 empty frames per call, 40 needed) the version moves at (almost)
    # every call: the partial estimate is the fallback and is published at once
    assert versions == sorted(versions) and len(set(versions[:5])) >= 4
    # once warm, a new snapshot only after ≥ 100 more contributions: far fewer versions
    late = versions[20:]
    assert len(set(late)) <= 1 + len(late) * 8 // 100 + 1
    seen = est.frames_seen
    looked = []
    for _ in range(16):
        est.update(frames(rng, 8, hit_rate=0.0)[0])
        looked.append(est.frames_seen - seen)
    # once warm, an eighth of the frames, gathered: about every eighth call looks at 8
    steps = np.diff([0, *looked])
    assert est.warm and set(steps.tolist()) <= {0, 8} and 8 <= looked[-1] <= 24


def test_nan_and_inf_pixels_are_left_out_and_frames_bounded() -> None:
    rng = np.random.default_rng(3)
    est = RunBackground(SHAPE, BackgroundConfig(warmup_frames=10, max_frames_per_update=4))
    x, _ = frames(rng, 64, hit_rate=0.0)
    x[:, 5, 5] = np.nan
    x[::2, 6, 6] = np.inf
    snap = est.update(x)
    assert est.frames_seen == 4  # at most max_frames_per_update looked at
    assert np.isfinite(snap.map).all() and snap.map[5, 5] == 0.0


def test_valid_mask_and_shape_checks() -> None:
    valid = np.ones(SHAPE, bool)
    valid[30:34] = False
    est = RunBackground(SHAPE, BackgroundConfig(warmup_frames=5), valid)
    snap = est.update(frames(np.random.default_rng(4), 32)[0])
    assert (snap.map[30:34] == 0).all()
    with pytest.raises(InputDataError, match="frames"):
        est.update(np.zeros((2, 10, 10), np.float32))
    with pytest.raises(ConfigError):
        BackgroundConfig(core_fraction=0.0)
    with pytest.raises(ConfigError):
        RunBackground(SHAPE, valid=np.ones((3, 3), bool))


def test_state_survives_a_restart(tmp_path) -> None:
    rng = np.random.default_rng(5)
    a = RunBackground(SHAPE, BackgroundConfig(warmup_frames=50))
    for _ in range(30):
        a.update(frames(rng, 16)[0])
    path = a.save(tmp_path / "bg.h5")
    b = RunBackground(SHAPE, BackgroundConfig(warmup_frames=50))
    b.load(path)
    np.testing.assert_allclose(b.snapshot.map, a.estimate(), rtol=1e-6)
    assert b.snapshot.warm == a.snapshot.warm and b.snapshot.version > a.snapshot.version
    x = frames(rng, 16)[0]
    b.update(x)
    a.update(x)
    np.testing.assert_allclose(b.estimate(), a.estimate(), rtol=1e-5, atol=1e-7)
    with pytest.raises(InputDataError, match="background"):
        RunBackground((10, 10)).load(path)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputDataError, match="unreadable"):
        b.load(tmp_path / "junk.h5")


def test_archived_run_estimate_matches_the_streaming_one() -> None:
    rng = np.random.default_rng(6)
    x, hits = frames(rng, 600)
    parts = [x[i : i + 100] for i in range(0, 600, 100)]
    snap = estimate_run_background(parts)
    assert close_to_truth(snap.map, 0.1)
    assert snap.frames == pytest.approx((~hits).sum(), rel=0.1)  # the empty frames
    np.testing.assert_allclose(estimate_run_background(x).map, snap.map, rtol=1e-6)
    by_totals = estimate_run_background(x, config=BackgroundConfig(shape_select=False))
    assert by_totals.frames == pytest.approx(300, abs=10)  # the core half (ties at the edges)


def test_archived_estimate_leaves_out_non_finite_pixels_of_some_blocks() -> None:
    rng = np.random.default_rng(8)
    x, _ = frames(rng, 400, hit_rate=0.0)
    cfg = BackgroundConfig(shape_select=False)  # the same frames either way: pixels compared
    clean = estimate_run_background([x[:200], x[200:]], config=cfg).map
    y = x.copy()
    y[200:, 7, 7] = np.nan  # dead in the second block only
    y[250, 9, 9] = np.inf
    snap = estimate_run_background([y[:200], y[200:]], config=cfg)
    assert np.isfinite(snap.map).all()
    assert np.isfinite(estimate_run_background([y[:200], y[200:]]).map).all()
    far = np.ones(SHAPE, bool)
    far[7, 7] = far[9, 9] = False
    np.testing.assert_allclose(snap.map[far], clean[far], rtol=1e-5)
    assert abs(snap.map[7, 7] - truth_map()[7, 7]) < 0.5  # from the first block's frames


def test_lit_pixel_baseline_finds_bright_hits_above_the_background() -> None:
    rng = np.random.default_rng(7)
    x, hits = frames(rng, 400, hit_rate=0.2)
    mean, var = expected_lit(truth_map())
    empty_lit = lit_pixels(x[~hits])
    assert abs(empty_lit.mean() - mean) < 3 * np.sqrt(var / len(empty_lit)) + 1
    x[0, 1, 1] = np.nan
    scores = hit_scores(x, truth_map())
    assert np.isfinite(scores).all()
    _, found = find_hits(x, truth_map())
    assert (found == hits).mean() > 0.95
