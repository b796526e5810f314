"""autoHyper: the initial learning rate found from how per-layer low-rank metrics respond to it (filled in by its issue)."""
