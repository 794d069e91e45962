"""Runs and labelled frames: HDF5 input in photons, labelled-frame sets, splits."""
