"""Classifiers (the guide and the trained models) and packaged ImageNet weights."""
