"""Engine and bundle checks on a real onnxruntime session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hitstream.bundle import load_bundle
from hitstream.errors import BundleError, ConfigError, InputDataError
from streamer.engine import Engine, EngineConfig
from tests.tiny_bundle import CLASSES, expected_probabilities, make_tiny_bundle


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    return make_tiny_bundle(tmp_path / "tiny")


def test_engine_matches_numpy_and_reports_cpu(tiny: Path) -> None:
    engine = Engine(load_bundle(tiny), EngineConfig(provider="auto", max_batch=8))
    assert engine.provider == "CPU"
    rng = np.random.default_rng(0)
    frames = rng.poisson(rng.uniform(0, 0.2, size=(5, 1, 1)), size=(5, 260, 257)).astype(np.float32)
    out = engine.infer(frames)
    np.testing.assert_allclose(out["probabilities"], expected_probabilities(frames), atol=1e-5)
    assert out["template_distance"].shape == (5,)
    assert engine.self_test()["probabilities"].shape == (2, len(CLASSES))


def test_requested_gpu_without_gpu_falls_back_or_fails(tiny: Path) -> None:
    engine = Engine(load_bundle(tiny), EngineConfig(provider="cuda"))
    assert engine.provider == "CPU"
    with pytest.raises(ConfigError, match="runs on the CPU"):
        Engine(load_bundle(tiny), EngineConfig(provider="cuda", require_gpu=True))


def test_pool_bounds_buffers(tiny: Path) -> None:
    engine = Engine(load_bundle(tiny), EngineConfig(max_batch=4, pinned_buffers=2))
    pool = engine.create_pool()
    a, buf_a = pool.acquire()
    b, _ = pool.acquire()
    assert buf_a.shape == (4, 260, 257) and pool.available() == 0
    pool.release(a)
    assert pool.acquire(timeout=0.1)[0] == a
    pool.release(a)
    pool.release(b)


def test_corrupted_model_is_refused(tiny: Path) -> None:
    with open(tiny / "model.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00garbage\x00")
    with pytest.raises(BundleError, match="corrupted: sha256"):
        load_bundle(tiny)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda root: (root / "manifest.json").unlink(), "has no manifest.json"),
        (lambda root: (root / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda root: (root / "model.onnx").unlink(), "is missing model.onnx"),
        (lambda root: shutil.rmtree(root), "does not exist"),
    ],
)
def test_broken_bundles_give_clear_errors(tiny: Path, mutate, message: str) -> None:
    mutate(tiny)
    with pytest.raises(BundleError, match=message):
        load_bundle(tiny)


def test_manifest_checks(tiny: Path) -> None:
    manifest = json.loads((tiny / "manifest.json").read_text())
    manifest["keep_classes"] = ["banana"]
    (tiny / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="unknown classes"):
        load_bundle(tiny)
    manifest["keep_classes"] = ["single"]
    manifest["files"]["../escape"] = "0" * 64
    (tiny / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(tiny)


def test_input_shape_mismatch_is_refused(tmp_path: Path) -> None:
    root = make_tiny_bundle(tmp_path / "small", shape=(64, 64))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["input"]["shape"] = [None, 260, 257]
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not match"):
        Engine(load_bundle(root))


# -- the run's background as a second input ------------------------------------------------


def test_background_bundle_gets_the_background_in_photons(tmp_path: Path) -> None:
    root = make_tiny_bundle(tmp_path / "bg", background=True)
    bundle = load_bundle(root)
    assert bundle.background_input == "background" and bundle.background_range == (0.0, 1.0)
    assert load_bundle(make_tiny_bundle(tmp_path / "plain")).background_input is None
    rng = np.random.default_rng(1)
    bg = np.full((260, 257), 0.04, np.float32)
    frames = rng.poisson(bg + rng.uniform(0, 0.02, (4, 1, 1)), (4, 260, 257)).astype(np.float32)
    engine = Engine(bundle, EngineConfig(provider="cpu", max_batch=8))
    assert engine.takes_background and engine.self_test()["probabilities"].shape == (2, 4)
    out = engine.infer(frames, bg)
    # float32 sums over 67k pixels in the graph: a little looser than the plain graph
    np.testing.assert_allclose(out["probabilities"], expected_probabilities(frames, bg), atol=2e-4)
    # no background: zeros, i.e. every photon counts (what the plain graph computes)
    np.testing.assert_allclose(
        engine.infer(frames)["probabilities"], expected_probabilities(frames), atol=2e-4
    )
    # in ADU: frames and background are both divided by the photon unit
    adu = Engine(bundle, EngineConfig(provider="cpu", photon_unit=3.0))
    bg_adu = bg * 3.0
    for _ in range(2):  # the second time with the map converted the first time
        got = adu.infer(frames * 3.0, bg_adu)["probabilities"]
        np.testing.assert_allclose(got, expected_probabilities(frames, bg), atol=2e-4)
    assert (bg_adu == bg * 3.0).all()  # the caller's map is left alone
    with pytest.raises(InputDataError, match="background of shape"):
        engine.infer(frames, np.zeros((10, 10), np.float32))
    # a bundle without the input ignores a background
    plain = Engine(load_bundle(tmp_path / "plain"), EngineConfig(provider="cpu"))
    assert not plain.takes_background
    np.testing.assert_allclose(
        plain.infer(frames, bg)["probabilities"], expected_probabilities(frames), atol=1e-5
    )


def test_graph_and_manifest_must_agree_on_the_background_input(tmp_path: Path) -> None:
    undeclared = make_tiny_bundle(tmp_path / "u", background=True, declare_background=False)
    with pytest.raises(BundleError, match=r"graph input\(s\) 'background' not declared"):
        Engine(load_bundle(undeclared))
    missing = make_tiny_bundle(tmp_path / "m", background=False, declare_background=True)
    with pytest.raises(BundleError, match="background input 'background' is not an input"):
        Engine(load_bundle(missing))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"input": "background", "shape": [None, 64, 64]}, r"is not \[null, 260, 257\]"),
        ({"input": "background", "shape": [1, 260, 257]}, "frame shape"),
        ({"shape": [None, 260, 257]}, "needs 'input'"),
        ({"input": "frames", "shape": [None, 260, 257]}, "frames' input"),
        ({"input": "background", "shape": [None, 260, 257], "dtype": "float16"}, "dtype"),
        (
            {"input": "background", "shape": [None, 260, 257], "training_range": {"level": [2]}},
            "training_range",
        ),
        ("background", "must be an object"),
    ],
)
def test_background_manifest_key_is_checked(tmp_path: Path, entry: object, message: str) -> None:
    root = make_tiny_bundle(tmp_path / "bg", background=True)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["background"] = entry
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        load_bundle(root)
