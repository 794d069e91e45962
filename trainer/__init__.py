"""hitstream trainer: label, build template banks, train, evaluate, fine-tune, export bundles.

Subpackages by stage: :mod:`trainer.data` (runs and labelled frames), :mod:`trainer.templates`
(polar template bank, ranking, its TensorFlow graph), :mod:`trainer.model` (preprocessing
graph, CNN, augmentation, training, export, evaluation, fine-tuning, the shipped bundles),
:mod:`trainer.labelling` (the labelling page) and :mod:`trainer.commands` (thin command
lines). TensorFlow is imported only inside the modules that train or export.
"""

from hitstream import __version__

__all__ = ["__version__"]
