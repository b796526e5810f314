"""ECC: energy-constrained compression with a bilinear energy model and ADMM pruning (filled in by its issue)."""
