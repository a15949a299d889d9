"""Benchmarks on an accelerator: pyrovae's training step against plain PyTorch and NumPyro."""
