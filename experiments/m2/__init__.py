"""Semi-supervised M2 and M1+M2 of Kingma et al. (2014): mnist (the error table), figures,
latent2d, m1 (the M1 VAE), m1_baseline; ``common`` holds their data splits and training.

Run from the repository root, e.g. ``python -m experiments.m2.mnist --help``.
"""
