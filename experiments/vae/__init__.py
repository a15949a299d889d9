"""The VAE of Kingma & Welling (2014) and Burda et al.'s (2016) test NLL: headline, evaluate,
latent2d, latent_sizes, visualise, gradient_variance; ``common`` holds their shared code.

Run from the repository root, e.g. ``python -m experiments.vae.headline --help``.
"""
