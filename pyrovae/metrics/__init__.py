"""Evaluation metrics that need optional packages (imported lazily by each submodule)."""
