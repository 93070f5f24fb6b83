"""Expansion reports: distances in feature spaces, label fidelity, the HTML page."""
