"""Real detectors: EXtra-geom geometry, the map onto the model's q grid, and the streamer
classifying karabo_bridge's simulated AGIPD and LPD trains into CXI files.

Real parts: EXtra-geom geometries and CrystFEL files, scipy sparse maps, ``SimServer`` on
127.0.0.1, the pipeline with onnxruntime and the rolling writer.
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from karabo_bridge.server import SimServerInThread

from hitstream.detectors import HC_EV_M, DetectorConfig, load_detector
from hitstream.errors import ConfigError
from hitstream.geometry import DetectorGeometry
from hitstream.qgrid import Resampler
from hitstream.resample_run import detector_config_from_toml
from hitstream.simulate import simulate_run
from streamer.config import load_config
from streamer.pipeline import Pipeline
from streamer.readback import read_run
from tests.helpers_stream import running_pipeline
from tests.tiny_bundle import make_tiny_bundle

GRID = DetectorGeometry()  # the shipped bundles' grid: 260 x 257, 0.3 mm, 0.586 m, 7.75 Å
# AGIPD (0.2 mm pixels) at 6 keV, placed where its pixels are the grid's pixels in q
AGIPD = DetectorConfig(geometry="AGIPD1M", distance_m=1.465, photon_energy_ev=6000.0)
# EXtra-geom's example quadrants moved 20 pixels in: a small central hole, as SPI runs use
CLOSED_QUADS = [[-505.0, 605.0], [-530.0, 10.0], [500.0, -140.0], [522.5, 455.0]]
DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "models" / "default"


@pytest.fixture(scope="module")
def agipd_map() -> Resampler:
    return Resampler(load_detector(AGIPD), GRID)


def test_config_needs_distance_and_energy() -> None:
    with pytest.raises(ConfigError, match="distance_m"):
        DetectorConfig(geometry="AGIPD1M")
    with pytest.raises(ConfigError, match="unknown detector"):
        load_detector(DetectorConfig(geometry="MYDET", distance_m=1, photon_energy_ev=6000))
    with pytest.raises(ConfigError, match="quad_pos"):
        DetectorConfig(geometry="AGIPD1M", distance_m=1, photon_energy_ev=6e3, quad_pos=[[0, 0]])


def test_map_keeps_photons_both_ways(agipd_map: Resampler) -> None:
    """Render model-grid frames onto the AGIPD and resample them back: the photons on the
    covered pixels come back (the map conserves them), the pattern is the same."""
    r = agipd_map
    assert r.detector.data_shape == (16, 512, 128)
    assert 0.7 < r.coverage.covered_share < 0.9  # quadrant gaps and the central hole
    frames = simulate_run(8, seed=5).frames
    det = r.render(frames)
    assert det.shape == (8, 16 * 512, 128) and det.min() >= 0
    back = r(det)
    on = frames * r.covered
    # resampling keeps every photon of the pixels that land on the grid
    landed = det.reshape(8, -1)[:, r.columns].sum(axis=1)
    np.testing.assert_allclose(back.sum(axis=(1, 2)), landed, rtol=1e-5)
    np.testing.assert_allclose(back.sum(axis=(1, 2)), on.sum(axis=(1, 2)), rtol=0.03, atol=3)
    lit = on.sum(axis=(1, 2)) > 100
    for a, b in zip(back[lit], on[lit], strict=True):  # whole pixels: the same counts
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.97
    assert np.array_equal(back, np.round(back))  # photon counts stay whole numbers
    split = Resampler(r.detector, GRID, whole_pixels=False)(det)  # parts share photons
    np.testing.assert_allclose(split.sum(axis=(1, 2)), on.sum(axis=(1, 2)), rtol=0.03, atol=3)
    assert (back[:, ~r.covered] == 0).all()  # gaps get no photons, as the model's own gap


def test_masked_and_nan_pixels_contribute_nothing(tmp_path: Path, agipd_map: Resampler) -> None:
    px = 512 * 128
    bad_module, nan_module = np.unique(agipd_map.columns // px)[:2]  # both land on the grid
    mask = np.zeros((16, 512, 128), np.uint8)
    mask[bad_module] = 1  # a module that is bad in this run
    with h5py.File(tmp_path / "mask.h5", "w") as f:
        f["mask"] = mask
    cfg = DetectorConfig(
        geometry="AGIPD1M",
        distance_m=1.465,
        photon_energy_ev=6000.0,
        mask_file=tmp_path / "mask.h5",
    )
    masked = Resampler(load_detector(cfg), GRID)
    assert masked.coverage.covered_share < agipd_map.coverage.covered_share
    frames = np.ones((2, 16 * 512, 128), np.float32)
    frames[1, nan_module * 512 : (nan_module + 1) * 512] = np.nan  # corrected data: NaN = bad
    out = masked(frames)
    assert np.isfinite(out).all()
    assert out[1].sum() < out[0].sum()  # the NaN module's photons are gone from frame 1 only
    frames[:, bad_module * 512 : (bad_module + 1) * 512] = 1e6  # a masked module cannot leak
    np.testing.assert_array_equal(masked(frames)[0], out[0])
    with pytest.raises(ConfigError, match="mask"):
        bad = DetectorConfig(
            geometry="LPD1M", distance_m=3, photon_energy_ev=6e3, mask_file=tmp_path / "mask.h5"
        )
        load_detector(bad)  # the AGIPD mask does not fit the LPD


def test_a_detector_that_does_not_cover_the_grid_is_refused_with_the_q_ranges() -> None:
    near = DetectorConfig(geometry="AGIPD1M", distance_m=0.4, photon_energy_ev=6000.0)
    r = Resampler(load_detector(near), GRID)
    with pytest.raises(ConfigError, match=r"q = .* /nm"):
        r.check_coverage()


@pytest.mark.parametrize("name", ["AGIPD1M", "JUNGFRAU"])
def test_crystfel_geometry_file_gives_the_same_pixels(tmp_path: Path, name: str) -> None:
    import extra_geom

    from hitstream.detectors import DETECTORS

    geom = getattr(extra_geom, DETECTORS[name]).example()
    path = tmp_path / f"{name}.geom"
    geom.write_crystfel_geom(str(path), photon_energy=6000, adu_per_ev=1, clen=1.0)
    cfg = DetectorConfig(geometry=str(path), type=name, distance_m=1.0, photon_energy_ev=6e3)
    det = load_detector(cfg)
    ref = np.asarray(geom.get_pixel_positions())
    np.testing.assert_allclose(det.positions.reshape(ref.shape)[..., :2], ref[..., :2], atol=1e-6)
    with pytest.raises(ConfigError, match="no CrystFEL geometry file"):
        load_detector(DetectorConfig(geometry=str(tmp_path / "nope.geom"), distance_m=1,
                                     photon_energy_ev=6e3))  # fmt: skip


def _grid_as_flat(**extra: object) -> DetectorConfig:
    """The model's own grid described as a FLAT detector."""
    kw: dict = {"geometry": "flat", "frame_shape": list(GRID.shape),
                "pixel_m": GRID.pixel_size_m, "distance_m": GRID.distance_m,
                "photon_energy_ev": HC_EV_M / GRID.wavelength_m, **extra}  # fmt: skip
    return DetectorConfig(**kw)


def test_flat_assembled_frames_of_any_size_land_on_the_grid(tmp_path: Path) -> None:
    """Another simulator's assembled frames: the grid itself as FLAT maps pixel to pixel;
    pixels half the size at the same angles (4 per grid pixel) keep every photon and the
    pattern; the TOML keys read; bad settings are refused with the keys to set."""
    frames = simulate_run(6, seed=11).frames
    same = Resampler(load_detector(_grid_as_flat()), GRID)
    assert same.detector.data_shape == (1, *GRID.shape)
    np.testing.assert_array_equal(same(frames), frames * same.covered)
    assert same.coverage.covered_share > 0.99 and same.warning() is None
    fine = _grid_as_flat(frame_shape=[520, 514], pixel_m=GRID.pixel_size_m / 2)
    r = Resampler(load_detector(fine), GRID)
    det = r.render(frames)
    assert det.shape == (6, 520, 514)
    back = r(det)
    np.testing.assert_allclose(back.sum(axis=(1, 2)), (frames * r.covered).sum(axis=(1, 2)),
                               rtol=0.02, atol=3)  # fmt: skip
    for a, b in zip(back, frames * r.covered, strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95
    # the beam off the middle: the frame is shifted, the pattern found again
    off = _grid_as_flat(center_px=[GRID.center_px[0] + 10, GRID.center_px[1] - 6])
    shifted = Resampler(load_detector(off), GRID)(np.roll(frames, (10, -6), axis=(1, 2)))
    inner = np.zeros(GRID.shape, bool)
    inner[20:-20, 20:-20] = True
    np.testing.assert_array_equal(shifted[:, inner], (frames * same.covered)[:, inner])
    toml = tmp_path / "flat.toml"
    toml.write_text(
        '[detector]\ngeometry = "FLAT"\nframe_shape = [1024, 1024]\npixel_m = 75e-6\n'
        "distance_m = 0.7\nphoton_energy_ev = 1200.0\n",
        encoding="utf-8",
    )
    cfg = detector_config_from_toml(toml)
    assert load_detector(cfg).data_shape == (1, 1024, 1024)
    assert load_config(toml).detector == cfg
    with pytest.raises(ConfigError, match="frame_shape"):
        DetectorConfig(geometry="FLAT", distance_m=1, photon_energy_ev=6e3, pixel_m=1e-4)
    with pytest.raises(ConfigError, match="pixel_m"):
        DetectorConfig(geometry="FLAT", frame_shape=[10, 10], distance_m=1, photon_energy_ev=6e3)


def test_flat_frames_of_another_size_replayed_into_the_streamer(
    tmp_path: Path, bundle: Path
) -> None:
    """A run of assembled (N, 520, 514) frames, replayed as a stream, classified live with
    ``detector.geometry = "FLAT"``: every frame, written on the model's grid."""
    from streamer.replay import ReplayConfig, ReplayServer

    fine = _grid_as_flat(frame_shape=[520, 514], pixel_m=GRID.pixel_size_m / 2)
    frames = Resampler(load_detector(fine), GRID).render(simulate_run(40, seed=2).frames)
    run = tmp_path / "peer.h5"
    with h5py.File(run, "w") as f:
        f["entry_1/data_1/data"] = frames
    rcfg = ReplayConfig(path=run, dataset="entry_1/data_1/data", endpoint="tcp://127.0.0.1:0",
                        frames_per_message=10)  # fmt: skip
    with ReplayServer(rcfg) as replay:
        cfg = load_config(None, {
            "model": str(bundle), "feed.endpoint": replay.endpoint, "output.dir": str(tmp_path),
            "output.run": "peer", "output.min_free_bytes": 0, "detector.geometry": "FLAT",
            "detector.frame_shape": [520, 514], "detector.pixel_m": fine.pixel_m,
            "detector.distance_m": fine.distance_m,
            "detector.photon_energy_ev": fine.photon_energy_ev,
        })  # fmt: skip
        summary = Pipeline(cfg).run()
        replay.join(timeout=30)
    assert summary.error is None and summary.frames_classified == 40
    t = read_run(tmp_path, "peer")
    assert len(t.frames.label) == 40


@pytest.mark.parametrize(
    ("name", "distance", "shape"),
    [("DSSC1M", 1.465, (16, 128, 512)), ("EPIX100", 0.3, (1, 704, 768)),
     ("PNCCD", 2.0, (2, 512, 1024)), ("LPD1M", 2.5, (16, 256, 256))],
)  # fmt: skip
def test_every_named_detector_maps_onto_the_grid(name: str, distance: float, shape: tuple) -> None:
    """EXtra-geom's other detectors (hexagonal DSSC pixels, the two pnCCD halves): the grid
    covered, every photon of the covered pixels kept."""
    det = load_detector(DetectorConfig(geometry=name, distance_m=distance, photon_energy_ev=6e3))
    assert det.data_shape == shape
    r = Resampler(det, GRID)
    r.check_coverage()
    frames = simulate_run(4, seed=3).frames
    back = r(r.render(frames))
    on = (frames * r.covered).sum(axis=(1, 2))
    np.testing.assert_allclose(back.sum(axis=(1, 2)), on, rtol=0.05, atol=5)


# ------------------------------------------------ karabo_bridge's simulated detectors → CXI


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("det") / "tiny")


@pytest.mark.parametrize(
    ("detector", "raw", "pulses", "distance", "datagen", "map_on"),
    [("AGIPD", False, 64, 1.465, "random", "cpu"), ("AGIPD", True, 64, 1.465, "random", "cpu"),
     ("LPD", False, 300, 2.9, "zeros", "cpu"), ("AGIPD", False, 64, 1.465, "random", "engine"),
     ("AGIPD", True, 64, 1.465, "random", "engine")],
    ids=["agipd-corrected", "agipd-raw", "lpd", "agipd-corrected-map-graph", "agipd-raw-map-graph"],
)  # fmt: skip
def test_simulated_detector_trains_are_assembled_resampled_and_written(
    bundle: Path, tmp_path: Path, detector: str, raw: bool, pulses: int, distance: float,
    datagen: str, map_on: str,
) -> None:  # fmt: skip
    sim = SimServerInThread(
        "tcp://127.0.0.1:0", sock="REP", detector=detector, raw=raw, datagen=datagen,
        data_like="online", protocol_version="2.2", debug=False,
    )  # fmt: skip
    cfg = load_config(
        None,
        {
            "model": str(bundle), "feed.endpoint": sim.endpoint, "feed.mode": "REQ",
            "feed.axis_order": "modules,fs,ss,pulses", "output.dir": str(tmp_path / "out"),
            "output.run": "r", "output.min_free_bytes": 0, "metrics.port": -1,
            "detector.geometry": f"{detector}1M", "detector.distance_m": distance,
            "detector.photon_energy_ev": 6000.0, "engine.max_batch": 32,
            "detector.map_on": map_on,
        },
    )  # fmt: skip
    sim.start()
    try:
        pipeline = Pipeline(cfg)
        with running_pipeline(pipeline) as run:
            deadline = time.monotonic() + 120
            while (
                pipeline.metrics.value("hitstream_frames_classified_total") < pulses
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)  # poll, bounded by the deadline
        summary = run.wait(0)
    finally:
        sim.stop()
    assert summary.error is None, summary.error
    assert not any(summary.rejected.values()), summary.rejected
    assert summary.frames_classified >= pulses and summary.frames_classified % pulses == 0
    assert summary.detector["name"] == f"{detector}1M" and summary.detector["covered_share"] > 0.7
    assert summary.feed["refused"] is None
    assert summary.detector["map_on"] == map_on
    if map_on == "engine":  # the train as it arrived, gathered by the graph
        assert summary.detector["trains_mapped_on_host"] == 0
    if detector == "AGIPD":  # the example quadrants' central cross crosses the low q
        assert summary.detector["low_q_share"] < 0.5
        assert any("low-q" in w for w in summary.warnings), summary.warnings
    tables = read_run(tmp_path / "out", "r")
    assert tables.frame_shape == GRID.shape  # the model's grid, not the detector's
    assert len(tables.frames) == summary.frames_received


def _push_frames(pipeline: Pipeline, endpoint: str, messages: list[np.ndarray]) -> None:
    """Send ``messages`` (pulse arrays) from a PUSH socket as trains 1, 2, ... and wait
    until the pipeline classified all their frames."""
    import zmq

    from streamer.decode import timestamp_metadata
    from streamer.protocol import serialize

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.bind(endpoint)
    try:
        with running_pipeline(pipeline):
            for tid, x in enumerate(messages, start=1):
                data = {"DET": {"image.data": x, "image.pulseId": np.arange(len(x))}}
                push.send_multipart(serialize(data, {"DET": timestamp_metadata("DET", tid, 0)}))
            n, deadline = sum(len(x) for x in messages), time.monotonic() + 300
            while (
                pipeline.metrics.value("hitstream_frames_classified_total") < n
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)  # poll, bounded by the deadline
    finally:
        push.close()
        ctx.term()


def _labels(out: Path) -> np.ndarray:
    t = read_run(out, "r").frames
    order = np.lexsort((t.pulse_id, t.train_id))
    return t.label[order].astype(np.int64)


def test_frames_rendered_on_agipd_classify_as_on_the_native_grid(tmp_path: Path) -> None:
    """Simulate on the model's grid, render onto an AGIPD 1M (modules), feed the module
    arrays, assemble and resample in the streamer: the shipped model's accuracy stays
    within 1 point of the same frames fed on the native grid."""
    from tests.procs import free_endpoint

    run = simulate_run(384, seed=2026)
    cfg = DetectorConfig(
        geometry="AGIPD1M", quad_pos=CLOSED_QUADS, distance_m=1.465, photon_energy_ev=6000.0
    )
    r = Resampler(load_detector(cfg), GRID)
    per = 32
    native = [run.frames[a : a + per] for a in range(0, len(run.frames), per)]
    modules = [r.render(x).reshape(len(x), 16, 512, 128) for x in native]
    base = {
        "model": str(DEFAULT_BUNDLE), "feed.mode": "PULL", "output.run": "r",
        "output.min_free_bytes": 0, "metrics.port": -1, "view.enabled": False,
    }  # fmt: skip
    accuracy = {}
    for name, messages, extra in [
        ("native", native, {}),
        ("agipd", modules, {
            "feed.axis_order": "pulses,modules,ss,fs", "detector.geometry": "AGIPD1M",
            "detector.quad_pos": CLOSED_QUADS, "detector.distance_m": 1.465,
            "detector.photon_energy_ev": 6000.0,
        }),
    ]:  # fmt: skip
        endpoint = free_endpoint()
        out = tmp_path / name
        conf = load_config(
            None, {**base, "feed.endpoint": endpoint, "output.dir": str(out), **extra}
        )
        _push_frames(Pipeline(conf), endpoint, messages)
        labels = _labels(out)
        assert len(labels) == len(run.labels)
        accuracy[name] = float(np.mean(labels == run.labels))
    assert accuracy["native"] > 0.9
    assert abs(accuracy["agipd"] - accuracy["native"]) <= 0.01, accuracy


# ------------------------------------------------------------ one source per module


def _module_message(tid: int, modules: dict[int, np.ndarray]) -> tuple[dict, dict]:
    data = {f"DET/{m}CH0:xtdf": {"image.data": a} for m, a in modules.items()}
    data["OTHER/CAM"] = {"image.data": np.zeros((2, 4, 4), np.float32)}
    meta = {s: {"timestamp.tid": tid} for s in data}
    return data, meta


def test_per_module_sources_are_assembled_in_module_order() -> None:
    from hitstream.errors import MessageError
    from streamer.decode import SourceSpec, decode_message

    spec = SourceSpec(source="DET/*CH0:xtdf", axis_order="pulses,ss,fs", modules=4,
                      detector_view=True)  # fmt: skip
    mods = {m: np.full((3, 5, 6), m + 1, np.uint16) for m in (0, 1, 3)}  # module 2 is absent
    out = decode_message(*_module_message(7, mods), spec, now=0.0)
    frames = out.batch.frames
    assert frames.shape == (3, 4 * 5, 6) and frames.dtype == np.float32
    for m in (0, 1, 3):
        assert (frames[:, m * 5 : (m + 1) * 5] == m + 1).all()
    assert np.isnan(frames[:, 10:15]).all() and out.missing_modules == (2,)
    assert out.ignored == ("OTHER/CAM",) and int(out.batch.train_id[0]) == 7
    mods[1] = np.zeros((4, 5, 6), np.uint16)  # a module with another number of pulses
    with pytest.raises(MessageError, match="differ"):
        decode_message(*_module_message(8, mods), spec, now=0.0)
    with pytest.raises(ConfigError, match=r"exactly one '\*'"):
        SourceSpec(source="DET/*/*")


def test_mock_run_with_all_modules_served_by_karabo_bridge_serve_files(
    bundle: Path, tmp_path: Path
) -> None:
    """extra-data's mock SPB run (raw AGIPD, 16 module files) served by
    ``karabo-bridge-serve-files``: one source per module, assembled, resampled, written."""
    import os
    import subprocess
    import sys

    from extra_data.tests.make_examples import make_spb_run

    from tests.helpers_stream import wait_for_line

    run_dir = tmp_path / "r0238"
    run_dir.mkdir()
    make_spb_run(str(run_dir), raw=True)
    tool = Path(sys.executable).with_name("karabo-bridge-serve-files")
    cmd = [str(tool), str(run_dir), "tcp://127.0.0.1:0", "--source", "*/DET/*", "-z", "PUSH"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        endpoint = wait_for_line(proc, "Streamer started on", 30).split()[-1]
        cfg = load_config(
            None,
            {
                "model": str(bundle), "feed.endpoint": endpoint, "feed.mode": "PULL",
                "feed.source": "SPB_DET_AGIPD1M-1/DET/*CH0:xtdf",
                "feed.axis_order": "pulses,data_gain,ss,fs",
                "output.dir": str(tmp_path / "out"), "output.run": "r",
                "output.min_free_bytes": 0, "metrics.port": -1,
                "detector.geometry": "AGIPD1M", "detector.quad_pos": CLOSED_QUADS,
                "detector.distance_m": 1.465, "detector.photon_energy_ev": 6000.0,
            },
        )  # fmt: skip
        pipeline = Pipeline(cfg)
        with running_pipeline(pipeline) as run:
            deadline = time.monotonic() + 120
            while (
                pipeline.metrics.value("hitstream_frames_classified_total") < 3 * 64
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)  # poll, bounded by the deadline
        summary = run.wait(0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert summary.error is None, summary.error
    assert not any(summary.rejected.values()), summary.rejected
    assert summary.frames_classified >= 3 * 64 and summary.feed["ignored_sources"] == {}
    assert summary.detector["low_q_share"] > 0.9  # quadrants closed in: no warning
    tables = read_run(tmp_path / "out", "r")
    assert tables.frame_shape == GRID.shape and len(tables.frames) == summary.frames_received


def test_trainer_resamples_an_archived_run_as_the_streamer_does(tmp_path: Path) -> None:
    from trainer.cli import main
    from trainer.data.ingest import open_run, read_frames

    cfg = DetectorConfig(
        geometry="AGIPD1M", quad_pos=CLOSED_QUADS, distance_m=1.465, photon_energy_ev=6000.0
    )
    r = Resampler(load_detector(cfg), GRID)
    frames = simulate_run(20, seed=9).frames
    detector_frames = r.render(frames).reshape(20, 16, 512, 128) * 31.0  # in ADU
    with h5py.File(tmp_path / "agipd.h5", "w") as f:
        f["INSTRUMENT/data"] = detector_frames.astype(np.float32)
    (tmp_path / "streamer.toml").write_text(
        '[detector]\ngeometry = "AGIPD1M"\nquad_pos = '
        + str(CLOSED_QUADS)
        + "\ndistance_m = 1.465\nphoton_energy_ev = 6000.0\n"
    )
    args = ["resample", str(tmp_path / "agipd.h5"), "--dataset", "INSTRUMENT/data",
            "--config", str(tmp_path / "streamer.toml"), "--model", str(DEFAULT_BUNDLE),
            "--photon-unit", "31", "--out", str(tmp_path / "grid.h5")]  # fmt: skip
    assert main(args) == 0
    with open_run(tmp_path / "grid.h5", "data") as src:
        assert src.info().geometry == GRID
        got = read_frames(src, np.arange(20))
    np.testing.assert_allclose(got, r(detector_frames / 31.0), rtol=1e-5, atol=1e-5)
    with h5py.File(tmp_path / "lpd.h5", "w") as f:
        f["data"] = np.zeros((2, 16, 256, 128), np.float32)  # not an AGIPD's frames
    bad = [*args[:1], str(tmp_path / "lpd.h5"), "--dataset", "data", *args[4:]]
    assert main(bad) != 0


def test_trainer_simulates_a_run_on_a_detector_and_back(tmp_path: Path) -> None:
    """``trainer simulate --detector-config``: the run on the grid and on the AGIPD's
    modules; ``trainer resample`` brings the modules back to the same photons."""
    from trainer.cli import main
    from trainer.data.ingest import open_run, read_frames

    (tmp_path / "s.toml").write_text(
        f'[detector]\ngeometry = "AGIPD1M"\nquad_pos = {CLOSED_QUADS}\n'
        "distance_m = 1.465\nphoton_energy_ev = 6000.0\n"
    )
    assert main(["simulate", str(tmp_path / "run.h5"), "--frames", "12",
                 "--detector-config", str(tmp_path / "s.toml")]) == 0  # fmt: skip
    with h5py.File(tmp_path / "run.detector.h5") as f:
        assert f["data"].shape == (12, 16, 512, 128)
    assert main(["resample", str(tmp_path / "run.detector.h5"), "--dataset", "data",
                 "--config", str(tmp_path / "s.toml"), "--model", str(DEFAULT_BUNDLE),
                 "--out", str(tmp_path / "back.h5")]) == 0  # fmt: skip
    with open_run(tmp_path / "run.h5", "data") as a, open_run(tmp_path / "back.h5", "data") as b:
        x, y = read_frames(a, np.arange(12)), read_frames(b, np.arange(12))
    r = Resampler(load_detector(detector_config_from_toml(tmp_path / "s.toml")), GRID)
    on = x * r.covered
    np.testing.assert_allclose(y.sum(axis=(1, 2)), on.sum(axis=(1, 2)), rtol=0.03, atol=3)


def test_photon_energy_from_the_feed_remaps_the_detector(bundle: Path, tmp_path: Path) -> None:
    """``detector.wavelength_source``: the XGM's wavelength in the messages; a change
    rebuilds the map before the message's frames are mapped, an equal one does not."""
    import zmq

    from streamer.decode import timestamp_metadata
    from streamer.protocol import serialize
    from tests.procs import free_endpoint

    xgm = "SA1_XTD2_XGM/XGM/DOOCS"
    endpoint = free_endpoint()
    cfg = load_config(
        None,
        {
            "model": str(bundle), "feed.endpoint": endpoint, "feed.mode": "PULL",
            "feed.source": "DET", "feed.axis_order": "pulses,modules,ss,fs",
            "output.dir": str(tmp_path / "out"), "output.run": "r",
            "output.min_free_bytes": 0, "metrics.port": -1,
            "detector.geometry": "AGIPD1M", "detector.quad_pos": CLOSED_QUADS,
            "detector.distance_m": 1.465, "detector.photon_energy_ev": 6000.0,
            "detector.wavelength_source": xgm,
        },
    )  # fmt: skip
    frames = np.random.default_rng(1).poisson(0.1, (2, 16, 512, 128)).astype(np.float32)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.bind(endpoint)
    pipeline = Pipeline(cfg)
    try:
        with running_pipeline(pipeline) as run:
            for tid, nm in enumerate([0.2066, 0.2, 0.2, 0.20001], start=1):
                data = {"DET": {"image.data": frames},
                        xgm: {"pulseEnergy.wavelengthUsed": nm}}  # fmt: skip
                meta = {s: timestamp_metadata(s, tid, 0) for s in data}
                push.send_multipart(serialize(data, meta))
            deadline = time.monotonic() + 60
            while (
                pipeline.metrics.value("hitstream_frames_classified_total") < 8
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)  # poll, bounded by the deadline
        summary = run.wait(0)
    finally:
        push.close()
        ctx.term()
    assert summary.error is None and summary.frames_classified == 8
    assert summary.detector["energy_changes"] == 1  # 0.2066 nm is the config's 6 keV
    assert summary.detector["wavelength_m"] == pytest.approx(0.2e-9)
