"""hitstream trainer: simulate, label, build template banks, train, evaluate, export bundles.

TensorFlow is imported only inside the modules that train or export.
"""

__version__ = "0.1.0"
