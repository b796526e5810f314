"""SEDONA: greedy block-wise (decoupled) learning and the search for the decoupling (filled in by its issue)."""
