"""The live view: bounded state, correct rates, rendered frames, and the page in Chromium."""

from __future__ import annotations

import io
import json
import logging
import urllib.request
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from PIL import Image

from hitstream.background import BackgroundSnapshot
from hitstream.bundle import load_bundle
from hitstream.errors import ConfigError
from hitstream.geometry import DetectorGeometry
from hitstream.render import HOT_RGB, MASK_RGB
from streamer.config import load_config
from streamer.live_view import LiveView, display_of
from streamer.metrics import Metrics
from streamer.pipeline import Pipeline
from streamer.replay import ReplayConfig, ReplayServer
from streamer.types import FrameBatch, ResultBatch
from tests.browser import browser, screenshot  # noqa: F401
from tests.helpers_stream import wait_for_line
from tests.procs import command, free_endpoint
from tests.tiny_bundle import CLASSES, make_tiny_bundle

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "default"
SHAPE = (260, 257)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def make_view(tiny: Path, metrics: Metrics | None = None, **kwargs: float) -> LiveView:
    view = LiveView(metrics or Metrics(), **kwargs)  # type: ignore[arg-type]
    view.set_model(load_bundle(tiny))
    return view


def result(
    labels: list[int],
    *,
    first_train: int = 1,
    frames: np.ndarray | None = None,
    confidence: list[float] | None = None,
    classes: tuple[str, ...] = CLASSES,
) -> ResultBatch:
    """A written batch with the given labels (one frame per train)."""
    n = len(labels)
    label = np.asarray(labels, np.int16)
    probs = np.full((n, len(classes)), 0.05, np.float32)
    probs[np.arange(n), label] = confidence if confidence is not None else 0.8
    batch = FrameBatch(
        frames=np.ones((n, *SHAPE), np.float32) if frames is None else frames,
        train_id=np.arange(first_train, first_train + n, dtype=np.uint64),
        pulse_id=np.arange(n, dtype=np.uint32),
        timestamp=np.zeros(n),
        received=np.zeros(n),
    )
    return ResultBatch(
        batch=batch,
        probabilities=probs,
        label=label,
        template_distance=np.full(n, np.nan, np.float32),
        keep=label == 0,
        model_version="tiny:1",
        classes=classes,
    )


def decode(png: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB; row 0 of the frame is row 0 of the picture (on top)."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def is_colour(img: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.all(img == np.asarray(rgb, np.uint8), axis=-1)


# -- counting ------------------------------------------------------------------------------


def test_hit_rate_fractions_and_throughput_from_known_labels(tiny: Path) -> None:
    view = make_view(tiny)
    for s in range(100, 105):  # five seconds of [single, single, multiple, empty]
        view.observe(result([0, 0, 1, 2], first_train=s * 10), now=s + 0.5)
    snap = view.snapshot(now=105.2)
    assert snap["classes"] == list(CLASSES)
    assert snap["hit_classes"] == ["single", "multiple", "other"]
    assert snap["hit_rate"] == pytest.approx(0.75)
    assert snap["class_fraction"] == pytest.approx(
        {"single": 0.5, "multiple": 0.25, "empty": 0.25, "other": 0.0}
    )
    assert snap["frames_per_s"] == pytest.approx(20 / 4.7)  # since the first frame
    series = snap["series"]
    assert series["t"] == [-5, -4, -3, -2, -1, 0]
    assert series["total"] == [4, 4, 4, 4, 4, 0]
    assert series["hits"] == [3, 3, 3, 3, 3, 0]
    assert series["counts"]["single"] == [2, 2, 2, 2, 2, 0]
    # long after the last batch: the rates fall to zero, the history remains
    later = view.snapshot(now=130.0)
    assert later["frames_per_s"] == 0.0 and later["hit_rate"] == 0.0
    assert sum(later["series"]["total"]) == 20


def test_totals_drops_and_model_come_from_the_metrics(tiny: Path) -> None:
    metrics = Metrics(CLASSES, ("single",))
    view = make_view(tiny, metrics)
    metrics.frames_classified.inc(12)
    metrics.frames_kept.inc(5)
    metrics.dropped("queue_full", 3)
    metrics.rejected("shape", 2)
    metrics.model_info.info({"name": "tiny", "version": "7", "path": "/m"})
    metrics.engine_info.info({"provider": "CPU", "providers": "CPUExecutionProvider"})
    snap = view.snapshot()
    assert snap["totals"]["classified"] == 12 and snap["totals"]["kept"] == 5
    assert snap["dropped"] == {"queue_full": 3.0}
    assert snap["rejected"] == {"shape": 2.0}
    assert snap["model"]["version"] == "7" and snap["engine"]["provider"] == "CPU"
    json.dumps(snap)  # JSON-ready as it is


def test_memory_stays_bounded_over_a_long_run(tiny: Path) -> None:
    view = make_view(tiny, frames_per_class=3, history_s=60, max_frames_per_s=100.0)
    for i in range(2000):  # 2000 s: the 60 s ring wraps many times
        view.observe(result([0, 1, 2, 3, 0], first_train=i * 5), now=float(i))
    assert view.frames_taken == 4 * 2000  # one per class per batch
    assert view.frames_held <= 2 * 3 * 4  # shown plus as many recently replaced
    snap = view.snapshot(now=1999.5)
    assert len(snap["series"]["t"]) == 60
    assert all(len(frames) == 3 for frames in snap["frames"].values())
    assert sum(snap["series"]["total"]) == 5 * 60
    assert view.frame_png(1) is None  # long gone
    newest = snap["frames"]["single"][0]
    assert newest["id"] > view.frames_taken - 4 and newest["train_id"] == 1999 * 5


def test_rate_limit_and_one_frame_per_class_per_batch(tiny: Path) -> None:
    view = make_view(tiny, max_frames_per_s=1000.0)
    view.observe(
        result([0] * 10 + [2], confidence=[0.5] * 7 + [0.95] + [0.5] * 3), now=0.0
    )  # one per class present, and the class's most confident frame
    snap = view.snapshot(now=0.1)
    assert view.frames_taken == 2
    assert [f["train_id"] for f in snap["frames"]["single"]] == [8]
    assert snap["frames"]["single"][0]["probability"] == pytest.approx(0.95)
    assert snap["frames"]["single"][0]["kept"] is True
    assert snap["frames"]["multiple"] == []

    slow = make_view(tiny, max_frames_per_s=2.0)
    for i in range(200):  # 20 batches/s for 10 s, every class in each
        slow.observe(result([0, 1, 2, 3]), now=i * 0.05)
    assert 18 <= slow.frames_taken <= 2 + 2 * 10
    shown = slow.snapshot(now=10.0)["frames"]
    assert all(len(frames) == 4 for frames in shown.values())  # every class gets its turn


def test_a_new_class_list_starts_afresh(tiny: Path) -> None:
    view = make_view(tiny)
    view.observe(result([0, 1]), now=1.0)
    view.observe(result([1, 1, 0], classes=("hit", "miss")), now=2.0)
    snap = view.snapshot(now=2.5)
    assert snap["classes"] == ["hit", "miss"]
    assert snap["series"]["total"] == [3]
    assert snap["class_fraction"]["miss"] == pytest.approx(2 / 3)
    assert snap["hit_rate"] == 0.0  # neither is a hit class of the tiny model


# -- pictures ------------------------------------------------------------------------------


def test_png_shows_the_detector_mask_in_its_own_colour_and_is_rendered_once(tiny: Path) -> None:
    view = make_view(tiny)
    frames = np.random.default_rng(0).poisson(2.0, (1, *SHAPE)).astype(np.float32)
    original = frames[0].copy()
    view.observe(result([0], frames=frames), now=0.0)
    frames[:] = 1e6  # the pipeline reuses its buffers: the view must hold its own copy
    png = view.frame_png(1)
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert view.frame_png(1) is png  # cached
    assert png == display_of(load_bundle(tiny)).render(original)
    img = decode(png)
    assert img.shape == (*SHAPE, 3)
    valid = DetectorGeometry(shape=SHAPE).valid_pixels()
    assert (~valid).sum() > 1000  # gap rows and the hole
    assert is_colour(img, MASK_RGB)[~valid].all()
    assert not is_colour(img, MASK_RGB)[valid].any()


def test_nan_inf_and_empty_frames_render(tiny: Path) -> None:
    display = display_of(load_bundle(tiny))
    frame = np.random.default_rng(1).poisson(1.0, SHAPE).astype(np.float32)
    frame[10, 10], frame[20, 20], frame[30, 30] = np.nan, np.inf, -np.inf
    frame[40, 40], frame[50, 50] = 3e38, -5.0
    img = decode(display.render(frame))
    assert is_colour(img, MASK_RGB)[[10, 20, 30], [10, 20, 30]].all()
    assert not is_colour(img, MASK_RGB)[[40, 50], [40, 50]].any()
    for blank in (np.full(SHAPE, np.nan, np.float32), np.zeros(SHAPE, np.float32)):
        assert decode(display.render(blank)).shape == (*SHAPE, 3)
    odd = decode(display.render(np.ones((7, 9), np.float32)))  # mask of another shape
    assert odd.shape == (7, 9, 3) and not is_colour(odd, MASK_RGB).any()


def test_hot_pixels_follow_the_bundle_rule(tiny: Path) -> None:
    display = display_of(load_bundle(DEFAULT_MODEL, verify=False))
    assert display.hot and display.coarsen == 1
    assert display_of(load_bundle(tiny)).hot is False  # no preprocessing in its manifest
    frame = np.zeros(SHAPE, np.float32)
    frame[60, 60] = 500.0  # alone: far above hot_abs + hot_rel × its neighbours
    frame[200, 200] = 5.0  # below hot_abs
    frame[100:104, 100:104] = 30.0  # a bright patch: its bins have bright neighbours
    img = decode(display.render(frame))
    hot = is_colour(img, HOT_RGB)
    assert hot[60:62, 60:62].all()  # the whole 2×2 bin the model caps
    assert not hot[200, 200] and not hot[101, 101]
    assert hot.sum() == 4
    levels = np.asarray(Image.open(io.BytesIO(display.render(frame))))  # palette indices
    top = levels[levels < 254].max()  # 254, 255: hot and mask
    brightest = {(int(r), int(c)) for r, c in np.argwhere(levels == top)}
    patch = {(r, c) for r in range(100, 104) for c in range(100, 104)}
    assert brightest == patch | {(200, 200)}  # row 0 on top: every pixel where it is


def test_routes_answer_page_data_and_frames(tiny: Path) -> None:
    view = make_view(tiny)
    view.observe(result([0, 2]), now=0.0)
    routes = view.routes()
    code, ctype, body = routes["/live"]("")
    assert code == 200 and ctype.startswith("text/html") and b'src="live/live.js"' in body
    assert routes["/"]("") == (code, ctype, body)
    code, ctype, body = routes["/live/live.js"]("")
    assert code == 200 and ctype.startswith("text/javascript") and b"live/data.json" in body
    assert routes["/live/live.css"]("")[1].startswith("text/css")
    code, ctype, body = routes["/live/data.json"]("")
    assert code == 200 and json.loads(body)["totals"]["classified"] == 0
    assert routes["/live/frame.png"]("id=1")[:2] == (200, "image/png")
    assert routes["/live/frame.png"]("id=99")[0] == 404
    assert routes["/live/frame.png"]("id=one")[0] == 400


def test_the_background_of_the_last_batch_is_shown(tiny: Path) -> None:
    view = make_view(tiny)
    routes = view.routes()
    assert view.snapshot()["background"] is None
    assert routes["/live/background.png"]("")[0] == 404
    m = np.full(SHAPE, 0.05, np.float32)
    m[100:120, 100:120] = 0.5
    snap = BackgroundSnapshot(m, 3, float(m.mean()), False, 40.0)
    with_bg = result([0, 2])
    with_bg.background = snap
    view.observe(with_bg, now=0.0)
    view.observe(result([2]), now=0.5)  # a batch without one: the last one stays shown
    shown = view.snapshot(now=1.0)["background"]
    assert shown == {
        "level": pytest.approx(snap.level),
        "warm": False,
        "frames": 40.0,
        "version": 3,
    }
    json.dumps(shown)
    code, ctype, png = routes["/live/background.png"]("v=3")
    assert (code, ctype) == (200, "image/png") and view.background_png() is png  # rendered once
    img = decode(png)
    valid = DetectorGeometry(shape=SHAPE).valid_pixels()
    assert is_colour(img, MASK_RGB)[~valid].all() and not is_colour(img, MASK_RGB)[valid].any()
    levels = np.asarray(Image.open(io.BytesIO(png)))  # palette indices: normalised, log scale
    assert valid[110, 110] and valid[50, 50]
    assert levels[110, 110] == levels[valid].max() > levels[50, 50] > 0
    newer = result([0])
    newer.background = BackgroundSnapshot(m * 2, 4, float(2 * m.mean()), True, 80.0)
    view.observe(newer, now=2.0)
    assert view.snapshot(now=2.5)["background"]["warm"] is True
    again = view.background_png()
    assert again is not png and view.background_png() is again  # once per new version


# -- in the pipeline -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Simulated diffraction frames (every class), as the default model expects them."""
    from hitstream.simulate import simulate_run  # numpy only, no TensorFlow

    path = tmp_path_factory.mktemp("run") / "run.h5"
    frames = simulate_run(96, seed=11).frames
    with h5py.File(path, "w") as f:
        f.create_dataset("entry_1/data_1/data", data=frames, chunks=(1, *SHAPE))
    return path


def run_pipeline(tiny: Path, run_file: Path, out: Path, broken: bool = False) -> Pipeline:
    """Replay the run into a pipeline (whose view raises on every batch if ``broken``)."""
    replay = ReplayServer(
        ReplayConfig(path=run_file, endpoint="tcp://127.0.0.1:0", frames_per_message=8)
    )
    with replay:
        overrides = {
            "model": str(tiny),
            "feed.endpoint": replay.endpoint,
            "output.dir": str(out),
            "output.min_free_bytes": 0,
        }
        pipeline = Pipeline(load_config(None, overrides))
        if broken:
            pipeline.live = BrokenView(pipeline.metrics)
        summary = pipeline.run()
        replay.join(timeout=30)
    assert summary.error is None and summary.frames_classified == 96
    assert summary.frames_kept == pipeline.metrics.value("hitstream_frames_kept_total") > 0
    assert summary.files  # the writer went on to the end
    return pipeline


def test_pipeline_feeds_the_view(tiny: Path, run_file: Path, tmp_path: Path) -> None:
    pipeline = run_pipeline(tiny, run_file, tmp_path / "out")
    assert pipeline.live is not None
    snap = pipeline.live.snapshot()
    assert sum(snap["series"]["total"]) == 96 == snap["totals"]["classified"]
    assert pipeline.live.frames_taken >= 1
    assert snap["model"]["name"] == "tiny"
    assert snap["background"]["version"] >= 1  # the run's own, also for a plain bundle
    assert pipeline.live.background_png() is not None


def test_view_settings_are_checked_and_it_can_be_off(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"view\.frames_per_class"):
        load_config(None, {"view.frames_per_class": 0})
    off = {"model": str(tiny), "output.dir": str(tmp_path), "view.enabled": False}
    assert Pipeline(load_config(None, off)).live is None


class BrokenView(LiveView):
    def observe(self, result: ResultBatch, now: float | None = None) -> None:
        raise RuntimeError("view bug")


def test_a_broken_view_never_stops_the_writer(
    tiny: Path, run_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="streamer.pipeline"):
        run_pipeline(tiny, run_file, tmp_path / "out", broken=True)  # all 96 frames written
    assert [r.message for r in caplog.records].count(
        "live view failed (logged once; the run goes on)"
    ) == 1


# -- in a browser ----------------------------------------------------------------------------

READY_JS = """
const imgs = [...document.querySelectorAll("img.frame")];
const value = (id) => parseFloat(document.getElementById(id).textContent);
const line = document.querySelector("#chart-fps polyline");
const bg = document.getElementById("background-map");
return imgs.some((i) => i.complete && i.naturalWidth > 0)
    && !bg.hidden && bg.complete && bg.naturalWidth > 0
    && value("fps") > 0 && value("hit-rate") > 0
    && line !== null && line.getAttribute("points").split(" ").length >= 3;
"""


def test_live_page_in_chromium(
    browser: object,  # noqa: F811
    run_file: Path,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    endpoint = free_endpoint()
    with (
        command(
            "streamer", "serve", "--model", DEFAULT_MODEL, "--endpoint", endpoint,
            "--out", tmp_path / "out", "--metrics-port", "0", "--keep-running",
            "--set", "output.min_free_bytes=0",
        ) as serve,
        command(
            "streamer", "replay", run_file, "--endpoint", endpoint, "-k", "4",
            "--rate", "40", "--repeat", "20",
        ) as replay,
    ):  # fmt: skip
        ready = wait_for_line(serve, "streamer ready", 60)
        url = ready.split("metrics ", 1)[1].strip().rsplit("/", 1)[0]
        wait_for_line(replay, "ready", 60)
        with urllib.request.urlopen(f"{url}/", timeout=5) as r:
            assert b"hitstream live" in r.read()
        driver: Any = browser
        driver.set_window_size(1400, 1500)
        driver.get(f"{url}/live")
        WebDriverWait(driver, 30, poll_frequency=0.25).until(lambda d: d.execute_script(READY_JS))
        find = driver.find_element
        bundle = load_bundle(DEFAULT_MODEL, verify=False)
        assert find(By.ID, "model-version").text == bundle.version
        assert find(By.ID, "model-name").text == bundle.name
        assert find(By.ID, "provider").text == "CPU"
        assert find(By.ID, "state").text == "running"
        assert driver.find_elements(By.CSS_SELECTOR, "#chart-classes rect")
        assert find(By.ID, "background-state").text in ("warm", "warming up")
        assert float(find(By.ID, "background-level").text) > 0
        assert int(find(By.ID, "background-version").text) >= 1
        captions = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "figcaption")]
        assert any(c.startswith("train ") and "p = " in c for c in captions)
        path = screenshot(driver, "live_view")
    assert path.stat().st_size > 10_000
