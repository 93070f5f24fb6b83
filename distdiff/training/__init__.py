"""Classifier training: the loop, one run as the scripts run it, and results across seeds."""
