"""hitstream streamer: live classification of diffraction frames from a ZeroMQ feed.

Never imports TensorFlow or :mod:`trainer`: a serving host needs only numpy, h5py, pyzmq
and onnxruntime.
"""

from hitstream import __version__

__all__ = ["__version__"]
