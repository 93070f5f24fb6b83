"""The DistDiff method: hierarchical prototypes, the energy and its guidance, observers of the loop."""
