"""The detector map as an onnxruntime graph (``detector.map_on = "engine"``), run here on the
CPU provider (the same graph runs on CUDA): the same frames as the host's scipy map, in every
memory order a train arrives in, for raw and corrected data."""

from __future__ import annotations

import numpy as np
import pytest

from hitstream.detectors import DetectorConfig, load_detector
from hitstream.errors import ConfigError
from hitstream.geometry import DetectorGeometry
from hitstream.qgrid import Resampler
from hitstream.simulate import simulate_run
from streamer.detector_map import DetectorMap
from streamer.map_graph import GraphMap, memory_layout

AGIPD = DetectorConfig(
    geometry="AGIPD1M", distance_m=1.465, photon_energy_ev=6000.0, quad_pos=[
        [-505.0, 605.0], [-530.0, 10.0], [500.0, -140.0], [522.5, 455.0]]
)  # fmt: skip


@pytest.fixture(scope="module")
def resampler() -> Resampler:
    return Resampler(load_detector(AGIPD), DetectorGeometry())


@pytest.fixture(scope="module")
def train(resampler: Resampler) -> np.ndarray:
    """12 pulses on the AGIPD's modules (pulses, modules, ss, fs), one module NaN in one."""
    det = resampler.render(simulate_run(12, seed=4).frames).reshape(12, 16, 512, 128)
    det[5, 3] = np.nan
    det[7, 0, 0, 0] = np.inf
    return det


def test_the_graph_maps_every_layout_as_the_host(resampler: Resampler, train: np.ndarray) -> None:
    g = GraphMap(resampler, ["CPUExecutionProvider"])
    ref = resampler(train)
    assert np.isfinite(ref).all() and ref.sum() > 0
    online = np.ascontiguousarray(train.transpose(1, 3, 2, 0))  # modules, fs, ss, pulses
    views = {
        "pulses, modules, ss, fs": train,
        "online: modules, fs, ss, pulses": online.transpose(3, 0, 2, 1),
        "stacked modules": train.reshape(12, 16 * 512, 128),
    }
    for name, view in views.items():
        np.testing.assert_array_equal(g(view), ref, err_msg=name)
    raw = np.nan_to_num(train, posinf=0).astype(np.uint16)  # raw data: counts as uint16
    np.testing.assert_array_equal(g(raw.transpose(1, 3, 2, 0).copy().transpose(3, 0, 2, 1)),
                                  resampler(raw))  # fmt: skip
    assert g.on_host == 0
    # pulses in the middle of the memory order: not a layout the graph takes, mapped on the
    # host (and counted), still right
    odd = np.ascontiguousarray(train.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    assert memory_layout(odd) is None
    np.testing.assert_array_equal(g(odd), ref)
    assert g.on_host == 1


def test_the_gather_table_is_the_sparse_map(resampler: Resampler, train: np.ndarray) -> None:
    index, weight = resampler.gather_table()
    flat = np.nan_to_num(train, nan=0.0, posinf=0.0).reshape(12, -1)
    got = (flat[:, index] * weight).sum(axis=-1).reshape(12, *resampler.grid.shape)
    np.testing.assert_allclose(got, resampler(train), rtol=1e-6)
    assert weight.min() >= 0 and index.max() < resampler.detector.n_pixels


def test_detector_map_runs_the_graph_when_configured(train: np.ndarray) -> None:
    from dataclasses import replace

    warnings: list[str] = []
    host = DetectorMap(AGIPD, warnings)
    graph = DetectorMap(replace(AGIPD, map_on="engine"), warnings, ["CPUExecutionProvider"])
    for m in (host, graph):
        m.set_grid(DetectorGeometry())
    assert host.graph is None and graph.graph is not None
    np.testing.assert_array_equal(graph(train), host(train))
    assert graph.status()["map_on"] == "engine" and graph.status()["trains_mapped_on_host"] == 0
    with pytest.raises(ConfigError, match="map_on"):
        replace(AGIPD, map_on="gpu")


def test_the_shipped_graphs_are_the_built_ones(tmp_path) -> None:
    """streamer/graphs/ holds what trainer.model.map_graphs builds (the streamer loads the
    files: it does not import onnx)."""
    from streamer.map_graph import GRAPH_DIR
    from trainer.model.map_graphs import write_map_graphs

    built = write_map_graphs(tmp_path)
    assert len(built) == 4
    for path in built:
        assert (GRAPH_DIR / path.name).read_bytes() == path.read_bytes(), path.name
