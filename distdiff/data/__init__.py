"""Datasets: the labelled-image container, the registry of named datasets, their loaders, augmentations."""
