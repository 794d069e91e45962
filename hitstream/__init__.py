"""hitstream core: what the live streamer and the offline trainer share.

The bundle contract, errors, detector geometry, photon units, the labels format, the numpy
frame kernel, HDF5 run input, compression names, the HTTP base and its security policy,
frame rendering and the simulator. It imports neither :mod:`streamer` nor :mod:`trainer`,
and never TensorFlow.
"""

__version__ = "0.1.0"
