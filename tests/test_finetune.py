"""``trainer finetune``: the shipped bundle's CNN, fine-tuned one epoch on a tiny simulated
run; before/after metrics on the same held-out frames, a new verified bundle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytest.importorskip("tensorflow")
ort = pytest.importorskip("onnxruntime")

from hitstream.bundle import load_bundle  # noqa: E402
from hitstream.simulate import simulate_run, write_run  # noqa: E402
from trainer.data.backgrounds import run_background  # noqa: E402
from trainer.data.ingest import open_run  # noqa: E402
from trainer.model.finetune import summary_lines  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"


def test_finetune_cli(tmp_path: Path) -> None:
    from trainer.cli import main

    run = simulate_run(40, seed=616)
    path = write_run(tmp_path / "new.h5", run)
    labels = tmp_path / "new.labels.csv"
    out = tmp_path / "models" / "tuned"
    args = ["finetune", "--model", str(DEFAULT), "--data", str(path), "--dataset", "data"]
    args += ["--labels", str(labels), "--out", str(out), "--epochs", "1", "--batch-size", "8"]
    assert main([*args, "--holdout-fraction", "0.25"]) == 0
    src, new = load_bundle(DEFAULT), load_bundle(out, verify=True)
    assert new.version != src.version and new.name == "tuned"
    assert new.classes == src.classes and new.thresholds == src.thresholds
    assert set(new.manifest["outputs"]) == set(src.manifest["outputs"])
    assert "templates.h5" in new.manifest["files"]  # the bank is carried over
    assert new.manifest["files"]["templates.h5"] == src.manifest["files"]["templates.h5"]
    assert new.manifest["training"]["source"]["version"] == src.version
    report = json.loads((out / "finetune.json").read_text())
    hold = np.array(report["holdout"]["index"])
    assert report["before"]["frames"] == report["after"]["frames"] == len(hold) == 10
    # both numbers are the ONNX graphs' on exactly these frames
    y = run.labels[hold].astype(np.int64)
    with open_run(path, "data") as src_run:  # the run's own background, as finetune uses
        background = run_background(src_run).map
    for key, bundle in (("before", src), ("after", new)):
        s = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
        p = s.run(["probabilities"], bundle.feed(run.frames[hold], background))[0]
        assert report[key]["accuracy"] == pytest.approx(np.mean(p.argmax(1) == y), abs=1e-5)
    assert new.manifest["metrics"]["holdout"]["accuracy"] == report["after"]["accuracy"]
    worse = report["after"]["accuracy"] < report["before"]["accuracy"]
    assert report["worse_than_before"] is worse
    warned = any(line.startswith("WARNING") for line in summary_lines(report, out))
    assert warned is worse
    assert any(line.startswith("WARNING") for line in summary_lines(
        {**report, "worse_than_before": True}, out
    ))  # fmt: skip
    # 10 held-out frames are too few for the new entropy reference: the source's is kept,
    # so the live novelty monitor still warns for the fine-tuned bundle
    assert new.manifest["novelty"] == src.manifest["novelty"]
    assert main(args) == 2  # exists, no --force


def test_finetuned_novelty_reference_from_enough_held_out_frames() -> None:
    from types import SimpleNamespace

    from trainer.model.finetune import NOVELTY_MIN_FRAMES, _novelty_reference

    src = SimpleNamespace(manifest={
        "novelty": {"entropy_q99": 1.3, "background_level": [0.0, 0.15]},
        "background": {"training_range": {"level": [0.0, 0.15]}},
    })  # fmt: skip
    sure = np.tile([0.97, 0.01, 0.01, 0.01], (NOVELTY_MIN_FRAMES, 1))
    ref = _novelty_reference(src, sure)
    assert ref["entropy_q99"] < 0.2 and ref["background_level"] == [0.0, 0.15]
    assert _novelty_reference(src, sure[:10]) == src.manifest["novelty"]
    assert "entropy_q99" in _novelty_reference(SimpleNamespace(manifest={}), sure[:10])


def test_auto_epochs_give_few_labels_many_passes_and_many_labels_few() -> None:
    from trainer.model.finetune import AUTO_EPOCHS, auto_epochs

    assert auto_epochs(140) == AUTO_EPOCHS[1]  # ~200 hand-picked labels, 70 % trained on
    assert auto_epochs(500) == 12
    assert auto_epochs(10_000) == AUTO_EPOCHS[0]
    assert auto_epochs(0) == AUTO_EPOCHS[1]


def test_finetune_uses_the_runs_unlabelled_frames(tmp_path: Path) -> None:
    """30 of 120 frames labelled: the other 90 re-estimate the batch-norm statistics and
    give pseudo-labels for a second round; finetune.json says what they did."""
    import keras

    from hitstream.labels import read_labels, write_labels
    from trainer.model.finetune import finetune_bundle
    from trainer.model.unlabelled import UnlabelledConfig

    run = simulate_run(120, seed=617)
    path = write_run(tmp_path / "new.h5", run)
    table = read_labels(tmp_path / "new.labels.csv")
    keep = np.arange(0, 120, 4)
    from hitstream.labels import LabelTable

    labels = tmp_path / "some.csv"
    write_labels(labels, LabelTable(run=table.run[keep], index=table.index[keep],
                                    label=table.label[keep]))  # fmt: skip
    out = tmp_path / "tuned"
    finetune_bundle(
        DEFAULT, [(path, "data")], labels, out, epochs=1, batch_size=8,
        holdout_fraction=0.25, progress=False,
        unlabelled=UnlabelledConfig(frames=90, threshold=0.5, per_class=10, pseudo_labels=True),
        target_precision=0.9,
    )  # fmt: skip
    manifest = load_bundle(out, verify=True).manifest
    # the kept class's threshold chosen on the held-out labels, recorded with its intervals
    choice = manifest["threshold_choice"]
    assert manifest["thresholds"][choice["class"]] == choice["threshold"] >= 0.5
    lo, hi = choice["threshold_ci95"]
    assert lo <= hi and choice["target_precision"] == 0.9
    if choice["precision"] is not None:
        plo, phi = choice["precision_ci95"]
        assert plo <= choice["precision"] <= phi
    summary = manifest["training"]
    used = summary["unlabelled"]
    assert used["frames"] == 90 and used["batch_norm_layers_adapted"] > 0
    pseudo = used["pseudo_labelled"]
    assert 0 < sum(pseudo.values()) <= 10 * len(pseudo)
    # the statistics moved towards the new run (the weights' share is one epoch of training)
    src = keras.models.load_model(DEFAULT / "model.keras", compile=False)
    new = keras.models.load_model(out / "model.keras", compile=False)
    bn = next(lay.name for lay in src.layers if isinstance(lay, keras.layers.BatchNormalization))
    a = np.asarray(src.get_layer(bn).moving_mean)
    b = np.asarray(new.get_layer(bn).moving_mean)
    assert not np.allclose(a, b)


def test_threshold_for_a_target_precision_with_its_intervals() -> None:
    from trainer.model.threshold_choice import threshold_for_target, wilson

    lo, hi = wilson(45, 50)
    assert 0.78 < lo < 0.79 and 0.95 < hi < 0.97  # the textbook values for 45/50
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    score = np.clip(0.5 + 0.35 * (2 * y - 1) + rng.normal(0, 0.2, 400), 0, 1)  # class 1: high
    p = np.stack([1 - score, score], axis=1)
    loose = threshold_for_target(p, y, 1, 0.8)
    strict = threshold_for_target(p, y, 1, 0.99)
    assert strict["threshold"] > loose["threshold"]  # more precision costs a higher threshold
    assert strict["precision"] >= 0.99 and loose["precision"] >= 0.8
    assert strict["recall"] < loose["recall"]
    for c in (loose, strict):
        a, b = c["threshold_ci95"]
        assert a <= c["threshold"] <= b


def test_a_precision_asked_for_is_not_lowered_by_the_recall_floor() -> None:
    """Precision 1 on the top two frames, then about 2 of 3 right: a bundle's own threshold
    would be lowered to keep half the class, but a person who asks for 0.97 gets 0.97 and is
    told the recall it costs (2 of 7)."""
    from trainer.model.threshold_choice import threshold_for_target

    s = np.array([0.99, 0.95, 0.94, 0.9, 0.85, 0.84, 0.8, 0.75, 0.74, 0.7], np.float32)
    y = np.array([1, 1, 0, 1, 1, 0, 1, 1, 0, 1])
    c = threshold_for_target(np.stack([1 - s, s], axis=1), y, 1, 0.97)
    assert c["threshold"] == float(s[1]) and c["precision"] == 1.0
    assert c["recall"] == pytest.approx(2 / 7)
