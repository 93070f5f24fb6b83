"""DistDiff: distribution-aware data expansion with diffusion models (Zhu et al., NeurIPS 2024)."""
