"""Shared harness: models, data, training engine, checkpoints, logging, metrics and seeding."""
