"""Decision rule, batcher and config: the small pure parts of the pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hitstream.background import BackgroundConfig
from hitstream.errors import ConfigError
from streamer.batcher import Batcher
from streamer.config import ServeConfig, load_config, parse_override, to_dict
from streamer.decision import decide, keep_mask_for, threshold_vector
from streamer.engine import BufferPool
from streamer.types import FrameBatch

CLASSES = ("single", "multiple", "empty", "other")


def test_decide_labels_and_keeps_with_thresholds() -> None:
    probs = np.array(
        [[0.9, 0.05, 0.05, 0.0], [0.55, 0.45, 0.0, 0.0], [0.1, 0.8, 0.1, 0.0], [np.nan, 0, 0, 0]],
        np.float32,
    )
    keep_by = keep_mask_for(CLASSES, ["single"])
    label, keep = decide(probs, keep_by, threshold_vector(CLASSES, {"single": 0.6}))
    assert label.tolist() == [0, 0, 1, -1]
    assert keep.tolist() == [True, False, False, False]
    with pytest.raises(ConfigError, match="banana"):
        keep_mask_for(CLASSES, ["banana"])


def _fb(tid: int, n: int) -> FrameBatch:
    frames = np.full((n, 4, 5), tid, np.float32)
    return FrameBatch(
        frames=frames,
        train_id=np.full(n, tid, np.uint64),
        pulse_id=np.arange(n, dtype=np.uint32),
        timestamp=np.zeros(n),
        received=np.zeros(n),
    )


def test_batcher_fills_splits_and_flushes() -> None:
    pool = BufferPool([np.zeros((4, 4, 5), np.float32) for _ in range(3)])
    b = Batcher(pool, max_batch=4, max_delay_s=10.0)
    ready, dropped = b.add(_fb(1, 3))
    assert ready == [] and dropped == 0 and b.pending == 3
    ready, _ = b.add(_fb(2, 3))  # 3 + 3 = one full batch of 4 and 2 pending
    assert len(ready) == 1
    batch = ready[0].batch
    assert batch.train_id.tolist() == [1, 1, 1, 2] and batch.pulse_id.tolist() == [0, 1, 2, 0]
    assert batch.frames[:, 0, 0].tolist() == [1, 1, 1, 2]
    assert b.due() is None  # deadline not reached
    rest = b.flush()
    assert rest is not None and rest.batch.train_id.tolist() == [2, 2]
    pool.release(ready[0].pool_index)
    pool.release(rest.pool_index)
    assert pool.available() == 3


def test_batcher_deadline_and_live_drop() -> None:
    pool = BufferPool([np.zeros((4, 4, 5), np.float32) for _ in range(2)])
    b = Batcher(pool, max_batch=4, max_delay_s=0.0)
    b.add(_fb(1, 1))
    staged = b.due()
    assert staged is not None and len(staged.batch) == 1
    ready, dropped = b.add(_fb(2, 9), block=False)  # one free buffer: 4 staged, 5 dropped
    assert len(ready) == 1 and dropped == 5


def test_config_file_overrides_and_unknown_keys(tmp_path: Path) -> None:
    cfg_file = tmp_path / "s.toml"
    cfg_file.write_text(
        'model = "models/x"\n[feed]\nmode = "PULL"\n[pipeline]\nmode = "live"\n'
        '[output]\nkeep_classes = ["single", "multiple"]\n'
    )
    cfg = load_config(cfg_file, {"engine.max_batch": 64, "output.run": "r7"})
    assert cfg.feed.mode == "PULL" and cfg.pipeline.mode == "live"
    assert cfg.engine.max_batch == 64 and cfg.output.run == "r7"
    assert cfg.output.keep_classes == ["single", "multiple"] and cfg.model == Path("models/x")
    cfg_file.write_text("[feed]\nendpont = 'tcp://x'\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(cfg_file)
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(None, {"engine.max_batch": "many"})
    with pytest.raises(ConfigError, match=r"feed\.mode"):
        load_config(None, {"feed.mode": "DEALER"})
    assert parse_override("engine.max_batch=32") == ("engine.max_batch", 32)
    assert parse_override("feed.mode=SUB") == ("feed.mode", "SUB")


def test_deploy_config_loads() -> None:
    """The documented example holds exactly the defaults (so it cannot drift)."""
    cfg = load_config(Path(__file__).parent.parent / "deploy" / "streamer.toml")
    assert cfg == ServeConfig()


def test_batcher_zero_copy_for_large_messages() -> None:
    pool = BufferPool([np.zeros((4, 4, 5), np.float32) for _ in range(2)])
    b = Batcher(pool, max_batch=4, max_delay_s=10.0, zero_copy_min=3)
    fb = _fb(7, 6)
    ready, _ = b.add(fb)
    assert [len(s.batch) for s in ready] == [4, 2] and all(s.pool_index == -1 for s in ready)
    assert np.shares_memory(ready[0].batch.frames, fb.frames)  # no copy
    assert pool.available() == 2
    ready, _ = b.add(_fb(8, 2))  # small message: staged in a pool buffer as before
    assert ready == [] and b.pending == 2 and pool.available() == 1


def test_background_section_defaults_come_from_the_estimator(tmp_path: Path) -> None:
    cfg = load_config(None)
    assert cfg.background == BackgroundConfig() and cfg.background.save_every_s == 30.0
    cfg_file = tmp_path / "s.toml"
    cfg_file.write_text("[background]\nenabled = false\nwarmup_frames = 50\nsave_every_s = 0\n")
    cfg = load_config(cfg_file, {"background.halflife_frames": 100})
    assert not cfg.background.enabled and cfg.background.warmup_frames == 50
    assert cfg.background.save_every_s == 0.0 and cfg.background.halflife_frames == 100.0
    assert to_dict(cfg)["background"]["warmup_frames"] == 50
    with pytest.raises(ConfigError, match=r"background\.save_every_s"):
        load_config(None, {"background.save_every_s": -1})
    with pytest.raises(ConfigError, match=r"background\.core_fraction"):
        load_config(None, {"background.core_fraction": 1.5})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, {"background.warmup": 5})


def test_freed_heap_memory_goes_back_to_the_os() -> None:
    """Buffers allocated and freed in another thread (as messages are) leave their memory in
    glibc's arenas; trim_heap gives it back."""
    import platform
    import threading

    import psutil

    from streamer.heap import trim_heap

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    proc = psutil.Process()

    def churn() -> None:
        keep = [np.ones(200_000, np.float64) for _ in range(400)]  # 640 MB, in small arrays
        del keep[::2]  # every other one: holes a plain free() cannot give back

    t = threading.Thread(target=churn)
    t.start()
    t.join()
    before = proc.memory_info().rss
    assert trim_heap() is True
    assert proc.memory_info().rss <= before
