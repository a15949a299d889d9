"""Scripts that reproduce the papers' numbers and figures, grouped by the system they study.

Run them from the repository root as modules, e.g. ``python -m experiments.vae.headline``;
``experiments.common`` holds what every group shares (provenance, atomic JSON, devices, figures).
"""
