"""Physically based single-particle-imaging frames, like CXIDB entry 58 (PR772 at LCLS/AMO).

Numpy and scipy only: the demo simulates runs without the training extras. Modules:
:mod:`~hitstream.simulate.config` (what shapes a run), :mod:`~hitstream.simulate.optics`
(detector sampling, far-field amplitudes), :mod:`~hitstream.simulate.scene` (frames: objects,
fluence, background, noise) and :mod:`~hitstream.simulate.files` (runs on disk).
"""

from hitstream.simulate.config import (
    OTHER_KINDS,
    SIM_CLASSES,
    TRUTH_COLUMNS,
    SimConfig,
    SimulatedRun,
)
from hitstream.simulate.files import RunWriter, default_labels_path, run_attrs, write_run
from hitstream.simulate.optics import (
    detector_q,
    icosahedron_thickness,
    projection_amplitude,
    random_rotation,
    rod_form_factor,
    sphere_form_factor,
)
from hitstream.simulate.scene import (
    concat_runs,
    expected_intensity,
    iter_chunks,
    simulate_frames,
    simulate_indices,
    simulate_run,
)

__all__ = [
    "OTHER_KINDS",
    "SIM_CLASSES",
    "TRUTH_COLUMNS",
    "RunWriter",
    "SimConfig",
    "SimulatedRun",
    "concat_runs",
    "default_labels_path",
    "detector_q",
    "expected_intensity",
    "icosahedron_thickness",
    "iter_chunks",
    "projection_amplitude",
    "random_rotation",
    "rod_form_factor",
    "run_attrs",
    "simulate_frames",
    "simulate_indices",
    "simulate_run",
    "sphere_form_factor",
    "write_run",
]
