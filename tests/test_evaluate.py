"""``trainer evaluate``: metrics of the shipped bundle's ONNX graph on a small simulated run,
checked against direct computations; plots are real PNG files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from hitstream.bundle import load_bundle  # noqa: E402
from hitstream.simulate import simulate_run, write_run  # noqa: E402
from trainer.data.backgrounds import run_background  # noqa: E402
from trainer.data.ingest import open_run  # noqa: E402
from trainer.model.evaluate import (  # noqa: E402
    average_precision,
    best_f1,
    calibration,
    evaluate_outputs,
    roc_auc,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "default"
PNG = b"\x89PNG\r\n\x1a\n"


def _auc_pairs(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney: P(score of a positive > score of a negative), ties count half."""
    s_pos, s_neg = scores[positive][:, None], scores[~positive][None, :]
    return float(np.mean((s_pos > s_neg) + 0.5 * (s_pos == s_neg)))


def _ap_direct(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mean over positives of the precision at their own score as threshold."""
    return float(np.mean([positive[scores >= s].mean() for s in scores[positive]]))


def test_binary_metrics_equal_direct_computation() -> None:
    rng = np.random.default_rng(0)
    positive = rng.random(300) < 0.3
    scores = np.round(rng.normal(positive * 1.0, 1.0), 1)  # rounded: many ties
    assert roc_auc(scores, positive) == pytest.approx(_auc_pairs(scores, positive), abs=1e-12)
    assert average_precision(scores, positive) == pytest.approx(
        _ap_direct(scores, positive), abs=1e-12
    )
    bf = best_f1(scores, positive)
    pred = scores >= bf["threshold"]
    tp = np.sum(pred & positive)
    f1 = 2 * tp / (pred.sum() + positive.sum())
    assert bf["f1"] == pytest.approx(f1)
    for t in np.unique(scores):  # no threshold does better
        p = scores >= t
        assert 2 * np.sum(p & positive) / (p.sum() + positive.sum()) <= bf["f1"] + 1e-12
    perfect = np.arange(10.0)
    assert roc_auc(perfect, perfect >= 5) == 1.0
    assert average_precision(perfect, perfect >= 5) == 1.0
    assert np.isnan(roc_auc(perfect, np.ones(10, bool)))


def test_calibration_equals_direct_computation() -> None:
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(4) * 0.5, size=500)
    y = rng.integers(0, 4, 500)
    cal = calibration(p, y, n_bins=5)
    conf, correct = p.max(axis=1), p.argmax(axis=1) == y
    ece = 0.0
    for lo, hi in zip(np.linspace(0, 1, 6)[:-1], np.linspace(0, 1, 6)[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.sum() / len(y) * abs(correct[m].mean() - conf[m].mean())
    assert cal["ece"] == pytest.approx(ece)
    assert sum(cal["count"]) == 500
    assert evaluate_outputs({"probabilities": p}, y, ["a", "b", "c", "d"], positive_class="a")[
        "calibration"
    ]["ece"] == pytest.approx(ece)


def test_evaluate_cli_on_the_shipped_bundle(tmp_path: Path) -> None:
    from trainer.cli import main

    run = simulate_run(48, seed=515)
    path = write_run(tmp_path / "ev.h5", run)
    out = tmp_path / "report"
    rc = main(
        [
            "evaluate",
            "--model",
            str(DEFAULT),
            "--data",
            str(path),
            "--dataset",
            "data",
            "--labels",
            str(tmp_path / "ev.labels.csv"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "per_class", "confusion", "keep", "cnn", "calibration", "bundle"):
        assert key in m, key
    assert {"roc_auc", "average_precision", "best_f1", "roc", "pr"} <= set(m["cnn"])
    for name in ("confusion.png", "roc_pr.png", "calibration.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 1000, name

    # the numbers, directly from an onnxruntime session on the same frames
    b = load_bundle(DEFAULT)
    s = ort.InferenceSession(str(b.model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    with open_run(path, "data") as src:  # the run's own background estimate, as evaluate uses
        background = run_background(src).map
    o = dict(zip(names, s.run(None, b.feed(run.frames, background)), strict=True))
    y = run.labels.astype(np.int64)
    prob = o["probabilities"]
    assert m["frames"] == 48
    assert m["accuracy"] == pytest.approx(np.mean(prob.argmax(1) == y), abs=1e-5)
    conf = np.zeros((4, 4), int)
    np.add.at(conf, (y, prob.argmax(1)), 1)
    assert m["confusion"] == conf.tolist()
    single = y == 0
    assert m["cnn"]["roc_auc"] == pytest.approx(_auc_pairs(prob[:, 0], single), abs=1e-4)
    assert m["cnn"]["average_precision"] == pytest.approx(_ap_direct(prob[:, 0], single), abs=1e-4)
    assert "template_distance" in names  # the shipped graph matches templates
    d = o["template_distance"]
    t = m["templates"]
    assert t["roc_auc"] == pytest.approx(_auc_pairs(-d, single), abs=1e-4)
    pred = d <= t["best_f1"]["threshold"] + 1e-7
    assert t["best_f1"]["recall"] == pytest.approx(np.mean(pred[single]), abs=1e-4)
    assert t["roc_auc"] > 0.5 and m["cnn"]["roc_auc"] > 0.8
