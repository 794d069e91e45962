"""Tests of the frame simulator: physics, determinism, files and the ``trainer simulate`` CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import h5py
import numpy as np
import pytest

from hitstream.errors import ConfigError
from hitstream.geometry import DetectorGeometry
from hitstream.labels import read_labels
from hitstream.simulate import (
    OTHER_KINDS,
    SIM_CLASSES,
    SimConfig,
    SimulatedRun,
    concat_runs,
    detector_q,
    expected_intensity,
    icosahedron_thickness,
    iter_chunks,
    projection_amplitude,
    random_rotation,
    simulate_frames,
    simulate_indices,
    simulate_parallel,
    simulate_run,
    sphere_form_factor,
    write_run,
)

GEOM = DetectorGeometry()
VALID = GEOM.valid_pixels()
CY, CX = GEOM.center_px
RADIUS = np.hypot(np.arange(GEOM.shape[0])[:, None] - CY, np.arange(GEOM.shape[1])[None, :] - CX)
N_PER_CLASS = 40


def only(name: str, **kw) -> SimConfig:
    """Config that makes frames of one class only."""
    fr = [0.0] * len(SIM_CLASSES)
    fr[SIM_CLASSES.index(name)] = 1.0
    return SimConfig(fractions=tuple(fr), **kw)


@pytest.fixture(scope="module")
def per_class() -> dict[str, tuple[SimulatedRun, SimulatedRun]]:
    """(noisy, noise-free) runs of N_PER_CLASS frames for every class."""
    out = {}
    for name in SIM_CLASSES:
        cfg = only(name)
        out[name] = (
            simulate_frames(0, N_PER_CLASS, 11, cfg),
            simulate_frames(0, N_PER_CLASS, 11, cfg, noise=False),
        )
    return out


def azimuthal_modulation(img: np.ndarray, r0: int = 8, r1: int = 40) -> float:
    """Median over rings r0..r1 of std/mean of the intensity around the ring."""
    ring = np.round(RADIUS).astype(int)
    cv = []
    for r in range(r0, r1):
        v = img[(ring == r) & VALID]
        cv.append(v.std() / max(v.mean(), 1e-12))
    return float(np.median(cv))


# --- determinism ------------------------------------------------------------------------


def test_same_seed_same_frames_and_frames_depend_only_on_index():
    a = simulate_frames(0, 12, 5)
    b = simulate_frames(0, 12, 5)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.labels, b.labels)
    alone = simulate_frames(7, 8, 5)
    np.testing.assert_array_equal(alone.frames[0], a.frames[7])
    assert alone.labels[0] == a.labels[7]
    picked = simulate_indices([9, 3], 5)
    np.testing.assert_array_equal(picked.frames, a.frames[[9, 3]])
    joined = concat_runs(list(iter_chunks(0, 12, 5, chunk=5)))
    np.testing.assert_array_equal(joined.frames, a.frames)
    np.testing.assert_array_equal(simulate_run(12, 5).frames, a.frames)
    other = simulate_frames(0, 12, 6)
    assert not np.array_equal(other.frames, a.frames)


def test_parallel_frames_and_truth_equal_one_process():
    truth: dict[str, np.ndarray] = {}
    x, y = simulate_parallel(20, 5, workers=2, chunk=7, truth=truth)
    run = simulate_run(20, 5)
    np.testing.assert_array_equal(x, run.frames)
    np.testing.assert_array_equal(y, run.labels)
    for k in ("photons", "background"):
        np.testing.assert_allclose(truth[k], run.params[k])
    assert truth["photons"][run.labels == SIM_CLASSES.index("empty")].max() == 0
    assert truth["photons"][run.labels == SIM_CLASSES.index("single")].min() > 0


def test_expected_intensity_matches_noise_free_frame_and_truth():
    run = simulate_frames(0, 6, 2, noise=False)
    np.testing.assert_array_equal(expected_intensity(4, 2), run.frames[4])
    total = run.params["photons"] + run.params["background"]
    np.testing.assert_allclose(run.frames.sum(axis=(1, 2)), total, rtol=1e-3)


# --- physics ----------------------------------------------------------------------------


def test_projection_amplitude_is_the_exact_dft_at_pixel_frequencies():
    rng = np.random.default_rng(0)
    t = rng.random((7, 9))
    fov = GEOM.wavelength_m * GEOM.distance_m / GEOM.pixel_size_m * 1e9
    nfft, origin, centre = (540, 540), (12.3, -40.1), (CY + 0.37, CX - 0.81)
    amp = projection_amplitude(t, origin, nfft, centre, GEOM.shape, fov)
    ys = origin[0] + np.arange(7) * fov / nfft[0]
    xs = origin[1] + np.arange(9) * fov / nfft[1]
    qy = (np.arange(GEOM.shape[0]) - centre[0]) / fov
    qx = (np.arange(GEOM.shape[1]) - centre[1]) / fov
    brute = np.exp(-2j * np.pi * np.outer(qy, ys)) @ t @ np.exp(-2j * np.pi * np.outer(xs, qx))
    brute *= fov**2 / (nfft[0] * nfft[1])
    assert np.abs(amp - brute).max() < 1e-5 * np.abs(brute).max()


def test_icosahedron_has_the_volume_of_its_equivalent_sphere():
    r = 35.0
    grid = np.arange(-80, 81) * 0.7
    t = icosahedron_thickness(random_rotation(np.random.default_rng(1)), r, grid, grid)
    volume = t.sum() * 0.7**2
    assert volume == pytest.approx(4 / 3 * math.pi * r**3, rel=2e-3)
    assert sphere_form_factor(np.zeros(1), r)[0] == pytest.approx(4 / 3 * math.pi * r**3)
    assert 2 * r * 0.9 < t.max() < 2 * r * 1.3  # thickness between in- and circum-diameter


def test_detector_q_spans_the_field_of_view():
    qy, qx = detector_q(GEOM)
    fov_nm = 7.75e-10 * 0.586 / 0.3e-3 * 1e9
    assert qx[1] - qx[0] == pytest.approx(1 / fov_nm)
    assert qy[0] == pytest.approx(-qy[-1])  # centre between the two middle rows


def test_single_hits_have_realistic_photons_at_low_q(per_class):
    noisy, _ = per_class["single"]
    tot = noisy.frames.sum(axis=(1, 2))
    assert 300 < np.median(tot) < 5000
    assert tot.min() > 30 and tot.max() < 30000
    inner = (noisy.frames * (GEOM.shape[1] / 6 > RADIUS)).sum(axis=(1, 2)) / tot
    assert np.median(inner) > 0.85
    assert np.all(noisy.params["n_particles"] == 1)
    assert np.all((noisy.params["radius_nm"] >= 30) & (noisy.params["radius_nm"] <= 40))


def test_empty_frames_have_few_photons(per_class):
    noisy, expected = per_class["empty"]
    tot = noisy.frames.sum(axis=(1, 2))
    assert np.median(tot) < 60
    assert np.all(expected.frames.sum(axis=(1, 2)) <= 40.0 * 1.001)
    assert np.all(noisy.params["photons"] == 0)
    single = per_class["single"][0].frames.sum(axis=(1, 2))
    assert np.median(single) > 10 * np.median(tot)


def test_multiples_show_interference_fringes(per_class):
    singles = [azimuthal_modulation(f) for f in per_class["single"][1].frames]
    multiples = [azimuthal_modulation(f) for f in per_class["multiple"][1].frames]
    assert np.median(multiples) > 2 * np.median(singles)
    assert np.mean(np.asarray(multiples) > max(singles)) > 0.9
    params = per_class["multiple"][0].params
    assert set(np.unique(params["n_particles"])) <= {2, 3}
    assert np.all(params["separation_nm"] >= 2 * 30.0)
    assert np.all(params["separation_nm"] < 1000.0)


def test_other_frames_mix_droplets_aggregates_and_rods(per_class):
    noisy, _ = per_class["other"]
    kinds = noisy.params["subclass"]
    assert set(np.unique(kinds)) == set(range(len(OTHER_KINDS)))
    tot = noisy.frames.sum(axis=(1, 2))
    droplet = tot[kinds == OTHER_KINDS.index("droplet")]
    assert np.median(droplet) > np.median(per_class["single"][0].frames.sum(axis=(1, 2)))
    assert np.all(noisy.params["photons"] <= SimConfig().max_photons)


def test_masked_pixels_are_exactly_zero(per_class):
    for noisy, expected in per_class.values():
        assert np.all(noisy.frames[:, ~VALID] == 0)
        assert np.all(expected.frames[:, ~VALID] == 0)
        assert np.all(noisy.frames >= 0)
    noisy = simulate_frames(0, 10, 3, SimConfig(read_noise_photons=0.5, hot_pixels_per_frame=5))
    assert np.all(noisy.frames[:, ~VALID] == 0)
    assert noisy.frames.min() < 0  # read noise makes negative values, as in real frames
    assert noisy.params["hot_pixels"].sum() > 20


def test_noise_free_intensity_obeys_friedel_symmetry():
    cfg = SimConfig(center_jitter_px=0.0)
    for name in ("single", "multiple", "other"):
        img = expected_intensity(0, 8, dataclasses.replace(cfg, fractions=only(name).fractions))
        flipped = img[::-1, ::-1]
        assert np.abs(img - flipped).max() < 1e-4 * img.max()
    jittered = expected_intensity(0, 8, only("multiple", center_jitter_px=1.0))
    assert np.abs(jittered - jittered[::-1, ::-1]).max() > 1e-3 * jittered.max()


def test_longer_detector_distance_magnifies_the_pattern():
    def mean_radius(distance_m: float) -> float:
        geom = dataclasses.replace(GEOM, distance_m=distance_m)
        img = expected_intensity(
            3,
            1,
            only("single", geometry=geom, center_jitter_px=0.0, background_photons=(1e-3, 1e-3)),
        )
        return float((img * RADIUS).sum() / img.sum())

    ratio = mean_radius(2 * 0.586) / mean_radius(0.586)
    assert 1.6 < ratio < 2.4


def test_photon_range_sets_the_brightness():
    dim = simulate_frames(0, 30, 4, only("single", photons=(100.0, 200.0))).params["photons"]
    bright = simulate_frames(0, 30, 4, only("single", photons=(1e4, 2e4))).params["photons"]
    assert np.median(bright) > 50 * np.median(dim)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fractions": (1.0, 0.0, 0.0)},
        {"fractions": (0.0, 0.0, 0.0, 0.0)},
        {"radius_nm": (40.0, 30.0)},
        {"photons": (0.0, 10.0)},
        {"multiple_count": (1, 3)},
        {"background_lowq_fraction": 2.0},
        {"geometry": DetectorGeometry(distance_m=-1.0)},
    ],
)
def test_invalid_config_is_rejected(kwargs):
    with pytest.raises(ConfigError):
        SimConfig(**kwargs)


def test_config_accepts_lists_and_round_trips_through_json():
    cfg = SimConfig(fractions=[1, 0, 0, 0], radius_nm=[20.0, 25.0])
    assert cfg.fractions == (1, 0, 0, 0) and hash(cfg)
    assert simulate_frames(0, 2, 0, cfg).params["radius_nm"].max() <= 25.0
    assert json.loads(cfg.as_json())["radius_nm"] == [20.0, 25.0]


def test_negative_seed_is_rejected():
    with pytest.raises(ConfigError):
        simulate_frames(0, 2, -1)


# --- files ------------------------------------------------------------------------------


def test_write_run_round_trips_frames_and_labels(tmp_path):
    run = simulate_frames(0, 9, 21)
    out = write_run(tmp_path / "sim.h5", run, dataset="entry_1/sel_p/patterns", chunk=4)
    with h5py.File(out, "r") as f:
        d = f["entry_1/sel_p/patterns"]
        assert d.shape == (9, *GEOM.shape) and d.dtype == np.float32
        assert d.chunks == (1, *GEOM.shape)
        np.testing.assert_array_equal(d[...], run.frames)
        assert d.attrs["seed"] == 21
    t = read_labels(tmp_path / "sim.labels.csv")
    assert t.run.tolist() == ["sim.h5"] * 9
    np.testing.assert_array_equal(t.index, np.arange(9))
    assert t.label.tolist() == [SIM_CLASSES[i] for i in run.labels]
    header = (tmp_path / "sim.labels.csv").read_text().splitlines()[0]
    assert header.startswith("run,index,class,n_particles")
    with pytest.raises(ConfigError, match="exists"):
        write_run(tmp_path / "sim.h5", run)


def test_write_run_custom_labels_path_and_run_name(tmp_path):
    run = simulate_frames(0, 3, 1)
    labels = tmp_path / "lab" / "my.csv"
    write_run(tmp_path / "a.h5", run, labels_path=labels, run_name="r0042", compression="lzf")
    t = read_labels(labels)
    assert t.run.tolist() == ["r0042"] * 3 and t.index.tolist() == [0, 1, 2] and len(t) == 3


# --- command line -----------------------------------------------------------------------


def trainer_main(argv: list[str]) -> int:
    """``trainer.cli.main``; until every listed command module exists, only ``simulate``."""
    from hitstream.cli import run_commands
    from trainer import cli

    try:
        return cli.main(argv)
    except ModuleNotFoundError:
        return run_commands("trainer", "", {"simulate": cli.COMMANDS["simulate"]}, argv)


def test_cli_simulate_end_to_end(tmp_path, capsys):
    out, png = tmp_path / "run.h5", tmp_path / "frames.png"
    rc = trainer_main(
        [
            "simulate",
            str(out),
            "--frames",
            "10",
            "--seed",
            "4",
            "--dataset",
            "data/patterns",
            "--fractions",
            "single=0.5,empty=0.5",
            "--photons",
            "500,1000",
            "--distance-mm",
            "600",
            "--chunk",
            "3",
            "--png",
            str(png),
        ]
    )
    assert rc == 0
    line = capsys.readouterr().out
    assert "wrote 10 frames" in line and "frames/s" in line and "multiple 0" in line
    geom = dataclasses.replace(GEOM, distance_m=0.6)
    cfg = SimConfig(geometry=geom, fractions=(0.5, 0.0, 0.5, 0.0), photons=(500.0, 1000.0))
    want = simulate_frames(0, 10, 4, cfg)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["data/patterns"][...], want.frames)
    t = read_labels(tmp_path / "run.labels.csv")
    assert t.label.tolist() == [SIM_CLASSES[i] for i in want.labels]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_bad_fractions(tmp_path):
    rc = trainer_main(
        ["simulate", str(tmp_path / "x.h5"), "--frames", "2", "--fractions", "singles=1"]
    )
    assert rc == 2
    assert not (tmp_path / "x.h5").exists()
