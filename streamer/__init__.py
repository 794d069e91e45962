"""hitstream streamer: live classification of diffraction frames from a ZeroMQ feed.

Never imports TensorFlow: a serving host needs only numpy, h5py, pyzmq and onnxruntime.
"""

__version__ = "0.1.0"
