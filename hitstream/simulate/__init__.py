"""Physically based single-particle-imaging frames, like CXIDB entry 58 (PR772 at LCLS/AMO).

Numpy and scipy only: the demo simulates runs without the training extras. Modules:
:mod:`~hitstream.simulate.config` (what shapes a run), :mod:`~hitstream.simulate.optics`
(detector sampling, far-field amplitudes), :mod:`~hitstream.simulate.scene` (frames: objects,
fluence, background, noise), :mod:`~hitstream.simulate.files` (runs on disk),
:mod:`~hitstream.simulate.parallel` (frames in worker processes),
:mod:`~hitstream.simulate.montage` (a PNG of example frames) and
:mod:`~hitstream.simulate.replay_runs` (uncompressed runs for throughput measurements).
scipy is imported on first use, so importing the package needs numpy and h5py only.
"""

from hitstream.simulate.beamline import BeamlineConfig
from hitstream.simulate.config import (
    OTHER_KINDS,
    SIM_CLASSES,
    TRUTH_COLUMNS,
    SimConfig,
    SimulatedRun,
)
from hitstream.simulate.files import (
    RunWriter,
    WrittenRun,
    default_labels_path,
    run_attrs,
    simulate_to_file,
    write_run,
)
from hitstream.simulate.montage import write_example_montage, write_montage
from hitstream.simulate.optics import (
    detector_q,
    icosahedron_thickness,
    projection_amplitude,
    random_rotation,
    rod_form_factor,
    sphere_form_factor,
)
from hitstream.simulate.parallel import simulate_parallel
from hitstream.simulate.replay_runs import (
    photon_like_frames,
    write_synthetic_run,
    write_tiled_run,
)
from hitstream.simulate.scene import (
    concat_runs,
    expected_empty_frame,
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
    "BeamlineConfig",
    "RunWriter",
    "SimConfig",
    "SimulatedRun",
    "WrittenRun",
    "concat_runs",
    "default_labels_path",
    "detector_q",
    "expected_empty_frame",
    "expected_intensity",
    "icosahedron_thickness",
    "iter_chunks",
    "photon_like_frames",
    "projection_amplitude",
    "random_rotation",
    "rod_form_factor",
    "run_attrs",
    "simulate_frames",
    "simulate_indices",
    "simulate_parallel",
    "simulate_run",
    "simulate_to_file",
    "sphere_form_factor",
    "write_example_montage",
    "write_montage",
    "write_run",
    "write_synthetic_run",
    "write_tiled_run",
]
