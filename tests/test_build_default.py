"""``trainer build-default --quick``: the training mixture, the test runs and both bundles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.bundle import load_bundle
from trainer.build_default_cli import TRAIN_DISTANCES_M, test_configs, training_configs
from trainer.simulate import SimConfig


def test_training_mixture_and_tests_differ() -> None:
    mixture = training_configs()
    assert {c.geometry.distance_m for c in mixture} == set(TRAIN_DISTANCES_M)
    assert {c.read_noise_photons for c in mixture} == {0.0, 0.08}
    tests = test_configs()
    assert set(tests) == {"test", "test_default", "test_detector"}
    for cfg in tests.values():
        assert cfg not in mixture
    # the detector test uses a distance and wavelength no training config has
    det = tests["test_detector"].geometry
    assert det.distance_m not in TRAIN_DISTANCES_M
    assert det.wavelength_m != SimConfig().geometry.wavelength_m


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["compact", "fast"])
def test_quick_build_writes_a_bundle_with_all_test_runs(tmp_path: Path, arch: str) -> None:
    out = tmp_path / arch
    cmd = [sys.executable, "-m", "trainer", "build-default", "--quick", "--out", str(out),
           "--architecture", arch]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    b = load_bundle(out, verify=True)
    assert set(b.manifest["metrics"]) == {"validation", "test", "test_default", "test_detector"}
    summary = b.manifest["training"]
    assert summary["config"]["architecture"] == arch
    assert summary["runs"]["train"]["config"]["configs"] == len(training_configs())
    outputs = set(b.manifest["outputs"])
    assert ("template_distance" in outputs) == (arch == "compact")
    assert b.name == ("default" if arch == "compact" else "fast")
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "already exists" in refused.stderr
    assert json.loads((out / "manifest.json").read_text())["model"]["macs_per_frame"] > 0
