"""The CNN and its bundle: preprocessing graph, architectures, augmentation, training,
export, evaluation, fine-tuning and the shipped default bundles."""
