"""Expansion runs: the work list, sharding, claims, the manifest and the latent cache."""
