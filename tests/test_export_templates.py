"""Template matching inside the ONE exported graph: ``export_bundle(..., bank=)``,
``trainer train --bank`` and ``trainer export --keras --bank``.

Real parts: simulated frames, a tiny Keras training (1 epoch), tf2onnx, onnxruntime, the
streamer's Engine and pipeline model, HDF5 banks in tmp_path.
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

from hitstream.bundle import load_bundle, sha256_file  # noqa: E402
from hitstream.errors import ConfigError  # noqa: E402
from hitstream.simulate import SIM_CLASSES, simulate_run, write_run  # noqa: E402
from streamer.engine import Engine, EngineConfig  # noqa: E402
from trainer.model.export import TEMPLATES_FILE, export_bundle  # noqa: E402
from trainer.model.train import TrainConfig, predict_probabilities, train_model  # noqa: E402
from trainer.templates.bank import build_bank, load_bank, save_bank  # noqa: E402
from trainer.templates.matching import match_frames  # noqa: E402

CLASSES = list(SIM_CLASSES)
# trained models take the run's background by default, so they also report the excess photons
OUTPUTS = {
    "probabilities", "photons", "excess_photons",
    "template_distance", "template_index", "template_angle_deg",
}  # fmt: skip


@pytest.fixture(scope="module")
def run():
    return simulate_run(40, seed=31)


@pytest.fixture(scope="module")
def model(run):
    val = simulate_run(12, seed=32)
    cfg = TrainConfig(epochs=1, batch_size=8, seed=5, augment=False)
    return train_model(
        run.frames, run.labels, CLASSES, val.frames, val.labels, cfg, progress=False
    ).model


@pytest.fixture(scope="module")
def bank_path(tmp_path_factory) -> Path:
    singles = simulate_run(20, seed=33)
    idx = np.flatnonzero(singles.labels == CLASSES.index("single"))[:5]
    bank = build_bank(singles.frames[idx], source_run="singles.h5", source_index=idx)
    return save_bank(bank, tmp_path_factory.mktemp("bank") / "bank.h5")


@pytest.fixture(scope="module")
def bundle(model, bank_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "tmpl"
    return export_bundle(
        model, out, name="tmpl", classes=CLASSES, thresholds={"single": 0.6}, bank=bank_path
    )


def _session(path: Path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(session, frames: np.ndarray) -> dict[str, np.ndarray]:
    """Run the graph; a background input (when the model takes one) gets a dark run."""
    feed = {"frames": frames}
    if "background" in {i.name for i in session.get_inputs()}:
        feed["background"] = np.zeros((1, *frames.shape[1:]), np.float32)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed), strict=True))


def test_manifest_describes_the_graph_and_lists_the_bank(bundle: Path, bank_path: Path) -> None:
    b = load_bundle(bundle, verify=True)
    assert b.manifest["files"][TEMPLATES_FILE] == sha256_file(bank_path)
    assert b.manifest["templates"]["n_templates"] == 5
    assert b.manifest["templates"]["file"] == TEMPLATES_FILE
    s = _session(b.model_path)
    outs = {o.name: o for o in s.get_outputs()}
    assert set(outs) == set(b.manifest["outputs"]) == OUTPUTS
    for name in OUTPUTS - {"probabilities"}:
        assert len(outs[name].shape) == len(b.manifest["outputs"][name]["shape"]) == 1
    assert b.manifest["outputs"]["template_index"]["dtype"] == "int32"
    assert outs["template_index"].type == "tensor(int32)"
    assert b.manifest["outputs"]["probabilities"]["shape"] == [None, 4]


def test_onnx_matches_keras_and_numpy_matcher(bundle: Path, model, bank_path, run) -> None:
    s = _session(bundle / "model.onnx")
    x = run.frames
    out = _run(s, x)
    np.testing.assert_allclose(out["probabilities"], predict_probabilities(model, x), atol=1e-4)
    ref = match_frames(load_bank(bank_path).matcher(), x)
    np.testing.assert_allclose(out["template_distance"], ref.distance, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(out["template_index"], ref.index)
    # dynamic batch: one frame and seven frames give the same rows
    one, seven = _run(s, x[:1]), _run(s, x[:7])
    for name in OUTPUTS:
        assert len(one[name]) == 1 and len(seven[name]) == 7
        np.testing.assert_allclose(seven[name][:1], one[name], rtol=1e-5, atol=1e-6)


def test_streamer_engine_and_pipeline_read_template_distance(bundle: Path, run) -> None:
    from streamer.batcher import StagedBatch
    from streamer.pipeline import _Model
    from streamer.types import FrameBatch

    engine = Engine(load_bundle(bundle), EngineConfig(provider="cpu", intra_op_threads=2))
    out = engine.infer(run.frames[:6])
    assert set(out) >= OUTPUTS
    n = 6
    batch = FrameBatch(
        frames=np.ascontiguousarray(run.frames[:n]),
        train_id=np.arange(n, dtype=np.uint64),
        pulse_id=np.zeros(n, np.uint32),
        timestamp=np.zeros(n),
        received=np.zeros(n),
    )
    result = _Model(engine, None).classify(StagedBatch(batch, -1))
    np.testing.assert_allclose(result.template_distance, out["template_distance"], rtol=1e-6)
    assert np.isfinite(result.template_distance).all()
    assert ((result.template_distance >= 0) & (result.template_distance <= 2)).all()


def test_reexport_cli_adds_the_bank_keeping_weights(bundle: Path, bank_path, run, tmp_path):
    from trainer.cli import main

    novelty = {"entropy_q99": 0.5, "background_level": [0.0, 0.1]}
    plain = export_bundle(
        load_model(bundle), tmp_path / "plain", name="plain", classes=CLASSES, thresholds={},
        background_range=(0.0, 0.1), novelty=novelty,
    )  # fmt: skip
    assert set(load_bundle(plain).manifest["outputs"]) == {
        "probabilities", "photons", "excess_photons",
    }  # fmt: skip
    out = tmp_path / "with-bank"
    rc = main(
        [
            "export",
            "--keras",
            str(plain / "model.keras"),
            "--bank",
            str(bank_path),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    old, new = load_bundle(plain), load_bundle(out)
    assert set(new.manifest["outputs"]) == OUTPUTS
    assert new.version != old.version and new.name == "plain"
    assert new.manifest["training"]["re_exported"]["version"] == old.version
    assert new.manifest["novelty"] == novelty  # what the live novelty monitor compares with
    assert new.manifest["background"]["training_range"] == {"level": [0.0, 0.1]}
    a, b = (
        _run(_session(old.model_path), run.frames[:8]),
        _run(_session(new.model_path), run.frames[:8]),
    )
    np.testing.assert_allclose(b["probabilities"], a["probabilities"], atol=1e-6)
    assert main(["export", "--keras", str(plain / "model.keras"), "--out", str(out)]) == 2


def test_train_cli_with_bank(tmp_path: Path, run, bank_path: Path) -> None:
    from trainer.cli import main

    path = write_run(tmp_path / "run1.h5", run)
    out = tmp_path / "trained"
    args = ["train", str(path), "--epochs", "1", "--batch-size", "8", "--no-augment"]
    assert main([*args, "--bank", str(tmp_path / "nope.h5"), "--out", str(out)]) != 0
    assert not out.exists()
    assert main([*args, "--bank", str(bank_path), "--out", str(out)]) == 0
    b = load_bundle(out)
    assert set(b.manifest["outputs"]) == OUTPUTS and TEMPLATES_FILE in b.manifest["files"]
    assert json.loads((out / "manifest.json").read_text())["templates"]["n_templates"] == 5


def test_bank_geometry_must_match_the_model(model, bank_path: Path) -> None:
    from hitstream.geometry import DetectorGeometry
    from trainer.model import inference_graph

    with pytest.raises(ConfigError, match="geometry"):
        inference_graph.inference_function(
            model, DetectorGeometry(hole_radius_px=9.0), load_bank(bank_path)
        )


def load_model(bundle: Path):
    import keras

    return keras.models.load_model(bundle / "model.keras", compile=False)
