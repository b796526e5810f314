"""Entry point: ``python -m launch`` composes the Hydra config and runs one method."""
