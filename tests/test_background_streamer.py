"""The run's background in the streamer, end to end over real sockets: replay → pipeline →
files, with a tiny bundle whose graph takes the background (tests/tiny_bundle.py).

The run: every frame carries a strong, steep background (Poisson of a fixed map, a few
thousand photons: the plain tiny graph calls such a frame 'single'); a few frames carry a
bright hit on top. Frames are sent in ADU (2 per photon, ``engine.photon_unit = 2``), so the
units are checked on the way: the estimate, the files and the graph are in photons.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from hitstream.bundle import load_bundle
from streamer.config import load_config
from streamer.pipeline import Pipeline, RunSummary
from streamer.readback import read_run
from streamer.replay import ReplayConfig, ReplayServer
from streamer.run_background import state_path
from tests.helpers_stream import running_pipeline
from tests.tiny_bundle import CLASSES, make_tiny_bundle

SHAPE = (260, 257)
N, K = 320, 16  # frames, frames per message
ADU = 2.0  # one photon in the feed's units
HIT_RATE = 0.15
EMPTY, SINGLE = CLASSES.index("empty"), CLASSES.index("single")
SETTINGS = {  # warm after 4 messages (~14 empty frames of 16 each); snapshots keep coming
    "background.warmup_frames": 48,
    "background.publish_every_frames": 32,
    "background.warm_share": 1.0,  # every frame looked at, also once warm: exact counts
}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {
        "bg": make_tiny_bundle(root / "bg", background=True),
        "bg2": make_tiny_bundle(root / "bg2", version="2", background=True),
        "plain": make_tiny_bundle(root / "plain"),
    }


def truth_map(valid: np.ndarray) -> np.ndarray:
    """Expected photons per pixel of an empty frame: flat scatter plus a steep low-q part,
    nothing on the detector's invalid pixels (gap, hole). About 2,400 photons per frame."""
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    r = np.hypot(yy - SHAPE[0] / 2, xx - SHAPE[1] / 2)
    m = 0.03 + 0.6 * (1 + (r / 12.0) ** 2) ** -1.5
    return (m * valid).astype(np.float32)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, bundles: dict[str, Path]) -> dict[str, Any]:
    """The run on disk (in ADU), its truth map (photons) and which frames are hits."""
    valid = load_bundle(bundles["bg"]).geometry.valid_pixels()
    truth = truth_map(valid)
    rng = np.random.default_rng(7)
    frames = rng.poisson(truth, (N, *SHAPE)).astype(np.float32)
    hits = rng.random(N) < HIT_RATE
    hits[:2] = False
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    blob = np.exp(-(np.hypot(yy - 90, xx - 160) ** 2) / (2 * 6.0**2)) * valid
    blob *= 6000.0 / blob.sum()  # a bright hit: 6,000 photons more
    frames[hits] += rng.poisson(blob, (int(hits.sum()), *SHAPE))
    path = tmp_path_factory.mktemp("run") / "run.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=frames * ADU, chunks=(1, *SHAPE))
    return {"path": path, "truth": truth, "valid": valid, "hits": hits}


def config(bundle: Path, endpoint: str, out: Path, **extra: object) -> Any:
    return load_config(
        None,
        {
            "model": str(bundle),
            "feed.endpoint": endpoint,
            "output.dir": str(out),
            "output.run": "r1",
            "output.min_free_bytes": 0,
            "engine.max_batch": K,
            "engine.photon_unit": ADU,
            "view.enabled": False,
            **SETTINGS,
            **extra,
        },
    )


def replay(run: dict[str, Any], **kw: Any) -> ReplayServer:
    return ReplayServer(
        ReplayConfig(
            path=run["path"],
            dataset="data",
            endpoint="tcp://127.0.0.1:0",
            frames_per_message=K,
            **kw,
        )
    )


def stream(
    bundle: Path, run: dict[str, Any], out: Path, replay_kw: dict[str, Any] | None = None, **extra
) -> tuple[Pipeline, RunSummary]:
    """Replay (part of) the run into a pipeline until the end marker."""
    with replay(run, **(replay_kw or {})) as server:
        pipeline = Pipeline(config(bundle, server.endpoint, out, **extra))
        summary = pipeline.run()
        server.join(timeout=30)
    assert summary.error is None, summary.error
    return pipeline, summary


def frame_index(tables: Any) -> np.ndarray:
    """Each row's frame of the run (train ids count messages from 1)."""
    return (tables.train_id.astype(np.int64) - 1) * K + tables.pulse_id.astype(np.int64)


def wait_until(cond: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)  # poll interval, bounded by the deadline


# -- end to end --------------------------------------------------------------------------


def test_empty_frames_with_a_strong_background_come_out_empty(
    bundles: dict[str, Path], run: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    pipeline, summary = stream(bundles["bg"], run, out)
    assert summary.frames_classified == N
    tables = read_run(out, "r1")
    idx = frame_index(tables)
    assert sorted(idx.tolist()) == list(range(N))
    order = np.argsort(idx)
    f = tables.frames
    label, warm = f.label[order], f.background_warm[order]
    level, which = f.background_level[order], f.background[order]
    hits = run["hits"]
    # warm-up: the first frames are classified with the partial estimate, flagged as such
    assert not warm[:K].any() and warm[-N // 2 :].all()
    assert (np.diff(warm.astype(int)) >= 0).all()  # warm once, warm for good
    # once warm, empty frames are empty and hits single
    assert (label[warm & ~hits] == EMPTY).mean() >= 0.97
    assert (label[hits] == SINGLE).all()
    # the files: the level in photons per valid pixel, close to the truth's
    truth = run["truth"]
    truth_level = float(truth[run["valid"]].mean())
    assert level[warm] == pytest.approx(truth_level, rel=0.1)
    assert np.isfinite(level).all() and (which >= 0).all()
    # maps stored: one per snapshot used in a file, referenced by the rows
    versions = tables.background_versions[which]
    assert (np.diff(versions) >= 0).all() and len(np.unique(versions)) >= 4
    last = tables.background_maps([which[-1]])[0]
    assert last.shape == SHAPE and last.sum() == pytest.approx(truth.sum(), rel=0.1)
    assert (last[~run["valid"]] == 0).all()
    with h5py.File(tables.files[0]) as h5:
        maps, ver = h5["entry_1/background/maps"], h5["entry_1/background/version"]
        assert maps.shape[1:] == SHAPE and maps.shape[0] == ver.shape[0] >= 1
        assert maps.attrs["units"] == "photons per pixel"
    kept = tables.kept
    np.testing.assert_array_equal(kept.background, f.background[f.kept])
    # the run summary, the status and the metrics say the same
    bg = summary.background
    assert bg["warm"] is True and bg["version"] == tables.background_versions[which[-1]]
    assert bg["level"] == pytest.approx(truth_level, rel=0.1) and bg["frames"] > 48
    assert pipeline.status()["background"] == bg
    m = pipeline.metrics
    assert m.value("hitstream_background_warm") == 1.0
    assert m.value("hitstream_background_level") == pytest.approx(bg["level"])
    assert m.value("hitstream_background_frames") == pytest.approx(bg["frames"])
    assert 0 <= m.value("hitstream_background_age_seconds") < 120
    # and the state is saved beside the files for a restart
    assert state_path(out, "r1", "w0").is_file()
    assert not list(out.glob(".*.tmp"))


def test_without_the_background_those_frames_are_labelled_wrongly(
    bundles: dict[str, Path], run: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="streamer.pipeline"):
        pipeline, summary = stream(bundles["bg"], run, out, **{"background.enabled": False})
    assert any("classifying without the run's background" in w for w in summary.warnings)
    assert any("classifying without the run's background" in r.message for r in caplog.records)
    tables = read_run(out, "r1")
    hits = run["hits"][frame_index(tables)]
    f = tables.frames
    assert (f.label[~hits] == EMPTY).mean() < 0.05  # the background input matters
    assert np.isnan(f.background_level).all() and (f.background == -1).all()
    assert not f.background_warm.any() and len(tables.background_versions) == 0
    assert summary.background == {
        "enabled": False,
        "level": None,
        "warm": None,
        "frames": None,
        "version": None,
    }
    assert np.isnan(pipeline.metrics.value("hitstream_background_warm"))
    assert not state_path(out, "r1", "w0").exists()


def test_bundles_without_a_background_input_get_the_estimate_recorded_only(
    bundles: dict[str, Path], run: dict[str, Any], tmp_path: Path
) -> None:
    """A plain bundle: classified as before (the background is not its input: 'single'),
    and the files still say what the run's background was."""
    out = tmp_path / "out"
    _, summary = stream(bundles["plain"], run, out)
    assert summary.frames_classified == N
    assert not [w for w in summary.warnings if "background" in w]
    f = read_run(out, "r1").frames
    assert (f.label == SINGLE).all()
    assert f.background_warm[-N // 2 :].all() and (f.background >= 0).all()


def test_a_restart_continues_with_the_saved_estimate(
    bundles: dict[str, Path], run: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    half = N // 2
    _, first = stream(bundles["bg"], run, out, {"stop": half})
    assert first.frames_classified == half and first.background["warm"] is True
    saved = state_path(out, "r1", "w0")
    assert saved.is_file()
    with caplog.at_level(logging.INFO, logger="streamer.run_background"):
        pipeline, second = stream(
            bundles["bg"], run, out, {"start": half, "first_train_id": 1 + half // K}
        )
    restored = [r.message for r in caplog.records if "restored" in r.message]
    assert restored and "background of run r1 restored: level" in restored[0]
    assert "warm True" in restored[0]
    assert pipeline.background.restored
    tables = read_run(out, "r1")
    idx = frame_index(tables)
    assert sorted(idx.tolist()) == list(range(N))
    f = tables.frames
    later = idx >= half
    # warm from the very first batch after the restart, and the version line continues
    assert f.background_warm[later].all()
    v = tables.background_versions[f.background]
    assert v[later].min() > v[~later].max()
    assert (f.label[later & ~run["hits"][idx]] == EMPTY).mean() >= 0.97
    assert second.background["frames"] > first.background["frames"] * 0.9

    # a state of another frame shape is not restored: the run starts afresh
    other = tmp_path / "other"
    other.mkdir()
    small = make_tiny_bundle(tmp_path / "small", shape=(64, 64), background=True)
    state_path(other, "r1", "w0").write_bytes(saved.read_bytes())
    with caplog.at_level(logging.WARNING, logger="streamer.run_background"):
        fresh = Pipeline(config(small, "tcp://127.0.0.1:9", other))
    assert not fresh.background.restored and fresh.background.current is None
    assert any("not restored" in r.message for r in caplog.records)


def test_a_hot_swap_keeps_the_estimate(
    bundles: dict[str, Path], run: dict[str, Any], tmp_path: Path
) -> None:
    """background bundle → plain bundle → background bundle, mid-run: every swap is
    accepted, the estimator is the pipeline's and goes on (one version line), frames in
    the plain model's stretch record the background too, and none is lost."""
    out = tmp_path / "out"
    with replay(run, rate=150) as server:
        pipeline = Pipeline(config(bundles["bg"], server.endpoint, out))
        estimator = pipeline.background.estimator

        def classified() -> float:
            return pipeline.metrics.value("hitstream_frames_classified_total")

        with running_pipeline(pipeline) as thread:
            wait_until(lambda: classified() >= 96)
            to_plain = pipeline.swapper.request(bundles["plain"])
            assert to_plain.ok and to_plain.model == "tiny:1", to_plain.message
            at_plain = classified()
            wait_until(lambda: classified() >= at_plain + 48)
            back = pipeline.swapper.request(bundles["bg2"])
            assert back.ok and back.model == "tiny-bg:2", back.message
            at_back = classified()
            summary = thread.wait(60)
        server.join(timeout=30)
    assert at_back < N, "the swaps must happen mid-run for this test to mean anything"
    assert summary.error is None and summary.frames_classified == N
    assert pipeline.background.estimator is estimator  # the same estimator throughout
    assert estimator is not None and estimator.frames_seen == N  # it saw every message
    tables = read_run(out, "r1")
    idx = frame_index(tables)
    order = np.argsort(idx)
    f = tables.frames
    models = np.array(tables.model_versions(f))[order]
    assert list(dict.fromkeys(models)) == ["tiny-bg:1", "tiny:1", "tiny-bg:2"]
    versions = tables.background_versions[f.background[order]]
    assert (np.diff(versions) >= 0).all()  # one version line across the swaps
    assert (f.background[order] >= 0).all()
    plain = models == "tiny:1"
    assert f.background_warm[order][plain].all()
    # each model got what it needs: the plain one says 'single', the background one 'empty'
    hits = run["hits"][np.sort(idx)]
    label = f.label[order]
    assert (label[plain & ~hits] == SINGLE).all()
    back_rows = (models == "tiny-bg:2") & ~hits
    assert back_rows.any() and (label[back_rows] == EMPTY).mean() >= 0.97


def test_the_live_view_shows_the_background(
    bundles: dict[str, Path], run: dict[str, Any], tmp_path: Path
) -> None:
    with replay(run, stop=4 * K) as server:
        over = {"view.enabled": True, "background.warmup_frames": 10 * K}  # still warming up
        cfg = config(bundles["bg"], server.endpoint, tmp_path / "out", **over)
        pipeline = Pipeline(cfg)
        pipeline.run()
        server.join(timeout=30)
    assert pipeline.live is not None
    snap = pipeline.live.snapshot()["background"]
    assert snap["version"] >= 1 and snap["warm"] is False and snap["level"] > 0
    code, ctype, png = pipeline.live.routes()["/live/background.png"]("v=1")
    assert (code, ctype) == (200, "image/png") and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert pipeline.live.background_png() is png  # rendered once per version


def test_a_level_outside_the_training_range_is_warned_about_once(
    run: dict[str, Any], tmp_path: Path
) -> None:
    """The run's level (about 0.037 photons per pixel) is below what this bundle was
    trained on (0.5 to 2): classified anyway, and said once in the log and the summary."""
    bright = make_tiny_bundle(tmp_path / "bright", background=True, background_level=(0.5, 2.0))
    assert load_bundle(bright).background_range == (0.5, 2.0)
    _, summary = stream(bright, run, tmp_path / "out", {"stop": 10 * K})
    outside = [w for w in summary.warnings if "outside the levels model tiny-bg:1" in w]
    assert len(outside) == 1 and "0.5 to 2" in outside[0]


# -- persistence, in the small ---------------------------------------------------------------


class Clock:
    """A clock the test moves by hand (the periodic save reads it)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_state_is_saved_every_save_every_s_and_only_when_it_changed(tmp_path: Path) -> None:
    from hitstream.background import BackgroundConfig
    from streamer.metrics import Metrics
    from streamer.run_background import StreamBackground

    clock, path = Clock(), tmp_path / "r_w0_background.h5"
    sb = StreamBackground(
        BackgroundConfig(warmup_frames=8, save_every_s=30.0),
        shape=(16, 16),
        geometry=None,
        photon_unit=2.0,
        path=path,
        run="r",
        metrics=Metrics(),
        clock=clock,
    )
    rng = np.random.default_rng(3)
    frames = rng.poisson(1.0, (8, 16, 16)).astype(np.float32) * 2.0  # in ADU
    sb.observe(frames)
    assert not path.exists()  # not due yet
    cur = sb.current
    assert cur is not None and cur.snapshot.level == pytest.approx(1.0, rel=0.3)  # photons
    np.testing.assert_allclose(cur.feed_map, cur.snapshot.map * 2.0)  # the feed's units
    clock.now += 30.0
    sb.observe(frames)
    assert path.is_file() and sb.saves == 1  # saved from the receiver's call, on time
    sb.close()
    assert sb.saves == 1  # nothing new since: not saved again
    sb.observe(frames)
    sb.close()  # the end of the run: saved whatever the time
    assert sb.saves == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_state_saved_with_another_history_length_is_restored(tmp_path: Path) -> None:
    """A restart with a different ``background.history``: the saved totals that were
    filled are taken (a wrapped, shorter history used to leave NaN holes that made the
    core interval empty: IndexError at the first update)."""
    from hitstream.background import BackgroundConfig, RunBackground

    rng = np.random.default_rng(4)
    short = RunBackground((16, 16), BackgroundConfig(history=64, warmup_frames=5))
    for _ in range(10):  # 160 totals: the history of 64 wrapped
        short.update(rng.poisson(1.0, (16, 16, 16)).astype(np.float32))
    path = short.save(tmp_path / "state.h5")
    for history in (1024, 32):
        longer = RunBackground((16, 16), BackgroundConfig(history=history, warmup_frames=5))
        longer.load(path)
        snap = longer.update(rng.poisson(1.0, (16, 16, 16)).astype(np.float32))
        assert snap.warm and snap.level == pytest.approx(1.0, rel=0.1)


# -- know when the model does not know ---------------------------------------------------


def with_novelty(bundle: Path, dest: Path, level: tuple[float, float]) -> Path:
    """A copy of ``bundle`` whose manifest records a training reference (hitstream.novelty):
    trained on backgrounds up to ``level[1]`` photon/pixel, no entropy alarm."""
    import json
    import shutil

    from hitstream.bundle import write_manifest

    shutil.copytree(bundle, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["novelty"] = {"entropy_q99": 10.0, "background_level": list(level)}
    write_manifest(dest, manifest)
    return dest


@pytest.mark.parametrize(("trained_up_to", "novel"), [(0.01, True), (0.1, False)])
def test_frames_far_beyond_the_training_background_raise_the_novelty_warning(
    tmp_path: Path,
    bundles: dict[str, Path],
    run: dict[str, Any],
    trained_up_to: float,
    novel: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    level = float(run["truth"][run["valid"]].mean())  # ≈ 0.036 photon per valid pixel
    assert 0.01 * 1.25 < level < 0.1
    bundle = with_novelty(bundles["bg"], tmp_path / "b", (0.0, trained_up_to))
    caplog.set_level(logging.WARNING, logger="streamer.run_novelty")
    pipeline, summary = stream(bundle, run, tmp_path / "out")
    report = summary.novelty
    assert report["frames"] >= 200 and report["novel"] is novel
    metric = pipeline.metrics.value("hitstream_novel", reason="background")
    assert metric == (1.0 if novel else 0.0)
    warned = [w for w in summary.warnings if "unlike the model's training data" in w]
    if novel:
        assert report["reasons"][0].startswith("background")
        assert len(warned) == 1 and "trainer finetune" in warned[0]  # says what to do
        assert pipeline.status()["novelty"]["novel"]
        assert any("unlike the model's training data" in r.message for r in caplog.records)
        assert pipeline.metrics.value("hitstream_novelty_score") >= 0.5
    else:
        assert report["reasons"] == [] and not warned
        assert pipeline.metrics.value("hitstream_novelty_score") < 0.5
