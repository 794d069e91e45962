"""Photon units: the estimate of one photon's value, ``--photon-unit`` in the trainer's
ingest and ``engine.photon_unit`` in the streamer (real files, sessions and sockets)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from hitstream.bundle import load_bundle
from hitstream.errors import ConfigError
from hitstream.labels import LabelTable, write_labels
from hitstream.simulate import SIM_CLASSES, SimConfig, simulate_frames
from hitstream.units import estimate_photon_unit
from streamer.config import load_config
from streamer.engine import Engine, EngineConfig
from streamer.pipeline import Pipeline, RunSummary
from streamer.readback import iter_kept_frames, read_run
from streamer.replay import ReplayConfig, ReplayServer
from tests.helpers_stream import running_pipeline
from tests.procs import free_endpoint
from trainer.data.ingest import load_labelled, open_run, read_frames

DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"
ADU = 31.0  # ADU per photon of the "detector" below


@pytest.fixture(scope="module")
def sim() -> tuple[np.ndarray, np.ndarray]:
    run = simulate_frames(0, 48, 77, SimConfig(read_noise_photons=0.05))
    return run.frames, run.labels


def adu(frames: np.ndarray, seed: int = 0) -> np.ndarray:
    """Photon frames as an integrating detector reports them: ADU with Gaussian noise."""
    rng = np.random.default_rng(seed)
    out = frames * ADU + rng.normal(0.0, 3.0, frames.shape)
    return out.astype(np.float32)


def test_estimate_finds_one_photon_in_any_unit(sim) -> None:
    x, _ = sim
    photons = estimate_photon_unit(x)
    assert photons.counts_like and abs(photons.photon_unit - 1.0) < 0.05
    assert photons.agrees_with(1.0) and photons.advice(1.0, "run") is None
    in_adu = estimate_photon_unit(adu(x))
    assert in_adu.counts_like and abs(in_adu.photon_unit / ADU - 1.0) < 0.05
    assert 2.5 < in_adu.noise_sigma < 3.5
    advice = in_adu.advice(1.0, "run")
    assert advice is not None and "--photon-unit 3" in advice
    assert in_adu.advice(ADU, "run") is None


def test_estimate_rejects_values_that_are_not_counts(sim) -> None:
    x, _ = sim
    scaled = x / np.nanmax(x, axis=(1, 2), keepdims=True) * 255  # the seed's max-to-255
    e = estimate_photon_unit(scaled)
    assert not e.counts_like
    assert "do not look like photon counts" in (e.advice(1.0, "run") or "")
    dark = estimate_photon_unit(np.zeros((4, 32, 32), np.float32))
    assert np.isnan(dark.photon_unit) and dark.advice(1.0, "run") is None


def _adu_run(tmp_path: Path, sim) -> tuple[Path, Path]:
    x, y = sim
    path = tmp_path / "adu.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=adu(x))
    labels = tmp_path / "adu.json"
    write_labels(
        labels,
        LabelTable(
            run=np.array(["adu.h5"] * len(y)),
            index=np.arange(len(y), dtype=np.int64),
            label=np.array([SIM_CLASSES[i] for i in y]),
        ),
    )
    return path, labels


def test_ingest_reads_photons_and_warns_about_other_units(tmp_path: Path, sim, caplog) -> None:
    x, _ = sim
    path, labels = _adu_run(tmp_path, sim)
    with open_run(path, "data", photon_unit=ADU) as src:
        got = read_frames(src, [3, 1])
    np.testing.assert_allclose(got, adu(x)[[3, 1]] / ADU, rtol=1e-6)
    with pytest.raises(ConfigError, match="positive"):
        open_run(path, "data", photon_unit=0.0)
    from hitstream.labels import read_labels

    caplog.set_level(logging.WARNING, logger="trainer.data.ingest")
    load_labelled([(path, "data")], read_labels(labels), SIM_CLASSES)
    assert "--photon-unit 3" in caplog.text
    caplog.clear()
    data = load_labelled([(path, "data")], read_labels(labels), SIM_CLASSES, photon_unit=ADU)
    assert "photon" not in caplog.text
    assert abs(float(np.nanmean(data.frames)) - float(np.nanmean(x))) < 0.01


def test_train_cli_takes_every_architecture_and_json_labels(tmp_path: Path, sim) -> None:
    from trainer.commands.train import ARCHITECTURES as CLI_ARCHITECTURES
    from trainer.data.labelled import load_labelled_frames
    from trainer.model.cnn import ARCHITECTURES

    assert set(CLI_ARCHITECTURES) == set(ARCHITECTURES)
    path, labels = _adu_run(tmp_path, sim)
    data = load_labelled_frames([path], "data", [labels], photon_unit=ADU)
    assert len(data.labels) == len(sim[1]) and data.classes[0] == "single"
    assert data.sources[0] == ("adu.h5", 0)


def test_engine_divides_by_the_photon_unit_and_leaves_the_frames_alone(sim) -> None:
    x, _ = sim
    bundle = load_bundle(DEFAULT)
    ref = Engine(bundle, EngineConfig(provider="cpu")).infer(x[:8])["probabilities"]
    raw = (x[:8] * ADU).astype(np.float32)
    before = raw.copy()
    got = Engine(bundle, EngineConfig(provider="cpu", photon_unit=ADU)).infer(raw)
    np.testing.assert_allclose(got["probabilities"], ref, atol=1e-4)
    np.testing.assert_array_equal(raw, before)
    with pytest.raises(ConfigError, match="photon_unit"):
        EngineConfig(photon_unit=-1.0)


def _serve(run: Path, out: Path, per_message: int = 16, **extra: object) -> RunSummary:
    endpoint = free_endpoint()
    cfg = load_config(None, {
        "model": str(DEFAULT), "feed.endpoint": endpoint, "output.dir": str(out),
        "output.run": "r", "output.min_free_bytes": 0, "engine.provider": "cpu", **extra,
    })  # fmt: skip
    pipeline = Pipeline(cfg)
    assert pipeline.status()["warnings"] == []
    replay = ReplayConfig(
        path=run, dataset="data", endpoint=endpoint, mode="REP", frames_per_message=per_message
    )
    with running_pipeline(pipeline) as run_thread, ReplayServer(replay) as server:
        server.join(60)
        summary = run_thread.wait(60)
    assert pipeline.status()["warnings"] == summary.warnings  # /status shows them too
    assert pipeline.live is not None  # and the live page
    assert pipeline.live.snapshot()["warnings"] == summary.warnings
    return summary


def test_streamer_warns_about_a_feed_in_adu_and_classifies_it_with_the_unit(
    tmp_path: Path, sim
) -> None:
    path, _ = _adu_run(tmp_path, sim)
    plain = _serve(path, tmp_path / "plain")
    assert plain.error is None and plain.frames_classified == len(sim[1])
    assert any("--photon-unit 3" in w for w in plain.warnings), plain.warnings
    fixed = _serve(path, tmp_path / "fixed", **{"engine.photon_unit": ADU})
    assert fixed.error is None and fixed.warnings == []
    labels = read_run(tmp_path / "fixed", "r").frames.label
    accuracy = float(np.mean(labels == sim[1]))
    assert accuracy >= 0.85, accuracy
    with h5py.File(path) as f:  # the kept frames are written as the feed sent them (ADU)
        sent = f["data"][...]
    tables = read_run(tmp_path / "fixed", "r")
    kept = np.concatenate([b for _, b in iter_kept_frames(tmp_path / "fixed", "r")])
    assert len(kept) == int(tables.frames.kept.sum()) > 0
    order = np.flatnonzero(tables.frames.kept)  # rows = frames in the order sent
    np.testing.assert_array_equal(kept, sent[order])
    assert json.dumps(fixed.as_dict())  # the summary, warnings included, is plain JSON


def test_the_units_check_waits_for_enough_lit_pixels_in_one_frame_batches(
    tmp_path: Path, sim
) -> None:
    path, _ = _adu_run(tmp_path, sim)
    s = _serve(path, tmp_path / "single", per_message=1, **{"engine.max_batch": 1})
    assert s.error is None and s.frames_classified == len(sim[1])
    assert any("--photon-unit 3" in w for w in s.warnings), s.warnings


def test_rank_in_adu_warns_and_with_the_unit_scores_like_photons(
    tmp_path: Path, sim, caplog
) -> None:
    from trainer.templates.bank import build_bank
    from trainer.templates.rank import rank_run

    x, y = sim
    path, _ = _adu_run(tmp_path, sim)
    photons = tmp_path / "photons.h5"
    with h5py.File(photons, "w") as f:
        f.create_dataset("data", data=adu(x) / np.float32(ADU))
    bank = build_bank(x[y == 0][:8])
    caplog.set_level(logging.WARNING, logger="trainer.data.ingest")
    rank_run(path, "data", bank, progress=False)
    assert "--photon-unit 3" in caplog.text
    caplog.clear()
    got = rank_run(path, "data", bank, progress=False, photon_unit=ADU)
    assert "photon" not in caplog.text
    ref = rank_run(photons, "data", bank, progress=False)
    np.testing.assert_allclose(got.distance, ref.distance, rtol=1e-4, atol=1e-5)
