"""``trainer build-default --quick``: the training mixture, the test runs and both bundles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hitstream.bundle import load_bundle
from hitstream.simulate import SimConfig
from trainer.model.build_default import (
    BANK_SEED,
    TEST_SEEDS,
    TRAIN_SEED,
    VAL_SEED,
    held_out_configs,
    train_config,
)


def test_test_runs_differ_from_training() -> None:
    tests = held_out_configs()
    assert set(tests) == {"test", "test_default", "test_detector", "test_beamline"}
    train = train_config()
    assert train.beamline.active and train.frames_per_run > 0  # many beamlines in training
    assert tests["test_beamline"].beamline.active
    assert tests["test_default"] == SimConfig() != train  # the simulator's defaults
    lo, hi = SimConfig().radius_nm
    assert train.radius_nm[0] < lo < hi < train.radius_nm[1]  # unequal pairs in training
    assert tests["test"] != train and tests["test_detector"] != train
    det, ref = tests["test_detector"].geometry, train.geometry
    assert det.distance_m != ref.distance_m and det.wavelength_m != ref.wavelength_m
    assert set(TEST_SEEDS) == set(tests)
    seeds = {TRAIN_SEED, VAL_SEED, BANK_SEED, *TEST_SEEDS.values()}
    assert len(seeds) == 3 + len(tests)  # no run (nor the template bank) shares a seed


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["fine", "fast"])
def test_quick_build_writes_a_bundle_with_all_test_runs(tmp_path: Path, arch: str) -> None:
    out = tmp_path / arch
    cmd = [sys.executable, "-m", "trainer", "build-default", "--quick", "--out", str(out),
           "--architecture", arch]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    b = load_bundle(out, verify=True)
    tests = {"test", "test_default", "test_detector", "test_beamline"}
    assert set(b.manifest["metrics"]) == {"validation", *tests}
    summary = b.manifest["training"]
    assert summary["config"]["architecture"] == arch
    assert set(summary["runs"]) == {"train", "validation", *tests}
    assert b.manifest["background"]["input"] == "background"  # the run's background as input
    assert b.manifest["background"]["training_range"]["level"][1] >= 0.1
    outputs = set(b.manifest["outputs"])
    assert ("template_distance" in outputs) == (arch == "fine")
    assert b.name == ("default" if arch == "fine" else "fast")
    assert len(b.manifest["preprocessing"]["channels"]) == (6 if arch == "fine" else 3)
    # the default's excess is over each shot's fitted background level (frame_kernel step
    # 7); the fast bundle's over the run's map, with the same number of epochs in all
    shot = arch == "fine"
    assert b.manifest["model"]["architecture"] == (f"{arch}-shot" if shot else arch)
    assert b.manifest["preprocessing"].get("shot_scale", False) is shot
    assert summary["epochs_run"] == 4 and summary["second_stage"]["epochs"] == (2 if shot else 0)
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "already exists" in refused.stderr
    assert json.loads((out / "manifest.json").read_text())["model"]["macs_per_frame"] > 0


def test_the_fast_bundle_trains_its_shot_epochs_on_the_run_level_excess() -> None:
    from trainer.model.build_default import FULL, QUICK, stages_for

    assert stages_for("fine", FULL) == (18, 3) and stages_for("fast", FULL) == (21, 0)
    assert stages_for("fine", QUICK) == (2, 2) and stages_for("fast", QUICK) == (4, 0)


def test_only_the_fast_bundle_leaves_the_detector_mask_alone() -> None:
    from trainer.model.build_default import augment_config_for

    assert augment_config_for("fast").mask_share == 0.0
    assert augment_config_for("fine").mask_share > 0.0


def test_training_maps_are_the_estimators_on_each_runs_beamline() -> None:
    """Each training run's map is what the streamer would publish for that beamline (the
    effective map): its ring profile follows the cleaned empty frames of the same beamline
    (other frames than the map's) far better than the raw mean of those frames does, where
    hot pixels, gains and offsets make the two differ. Its level is the core frames' (within
    the noise of 100–400 frames on runs whose level jitters by up to 35 %)."""
    from dataclasses import replace

    import numpy as np

    from hitstream import frame_kernel as fk
    from hitstream.background import estimate_run_background
    from hitstream.simulate import simulate_frames
    from trainer.model.build_default import RUN_FRAMES, estimated_maps

    cfg, runs = train_config(), 6
    maps = estimated_maps(TRAIN_SEED, runs * RUN_FRAMES, cfg)
    assert maps.maps.shape == (runs, *cfg.geometry.shape)
    assert np.array_equal(maps.index, np.arange(runs * RUN_FRAMES) // RUN_FRAMES)
    span = RUN_FRAMES * 1000  # run r of ``empty`` is run r of ``cfg``; far from the map's frames
    empty = replace(cfg, fractions=(0.0, 0.0, 1.0, 0.0), frames_per_run=span)
    rings = fk.shot_rings(cfg.geometry, 1)

    def profile(beta: np.ndarray) -> np.ndarray:
        v = beta.reshape(-1) @ rings
        return v / v.sum()

    errors, raw_errors = [], []
    for r in range(runs):
        x = simulate_frames(r * span + span // 2, r * span + span // 2 + 300, TRAIN_SEED, empty)
        cleaned = fk.bin_frames(x.frames).mean(axis=0)
        beta = fk.background_bins(maps.maps[r], cfg.geometry)[1][0]
        raw = estimate_run_background(x.frames, cfg.geometry.valid_pixels()).map
        beta_raw = fk.background_bins(raw, cfg.geometry)[1][0]
        assert 0.75 < beta.sum() / cleaned.sum() < 1.1, r
        errors.append(np.abs(profile(beta) / profile(cleaned) - 1).max())
        raw_errors.append(np.abs(profile(beta_raw) / profile(cleaned) - 1).max())
    assert max(raw_errors) > 1.0  # these beamlines' detectors do not count exactly
    assert np.mean(errors) < 0.5 * np.mean(raw_errors)


def test_training_maps_do_not_depend_on_the_number_of_workers() -> None:
    """The runs' maps are spread over processes; the same seed gives the same maps."""
    import numpy as np

    from trainer.model.build_default import RUN_FRAMES, estimated_maps

    cfg = train_config()
    one = estimated_maps(TRAIN_SEED, 3 * RUN_FRAMES, cfg, workers=1)
    two = estimated_maps(TRAIN_SEED, 3 * RUN_FRAMES, cfg, workers=2)
    assert np.array_equal(one.maps, two.maps) and np.array_equal(one.index, two.index)
    assert len({m.tobytes() for m in one.maps}) == 3  # each run its own beamline
