"""ECCO-DNN: training as an ODE with a step size set by a local-truncation-error tolerance (filled in by its issue)."""
