"""Linear latent-variable models (PCA, factor analysis, ICA, NMF): components.

Run from the repository root: ``python -m experiments.linear.components --help``.
"""
