"""Whole jobs as the top-level scripts run them (expand.py)."""
