"""Scripts that reproduce the papers' numbers and figures, grouped by the system they study.

Run them from the repository root as modules, e.g. ``python -m experiments.vae.headline``;
``experiments.common`` holds what every group shares (provenance, atomic JSON, the run options)
and ``experiments.figures`` its figures. Groups: ``vae``, ``m2``, ``linear``, ``gen_vs_disc``.
"""
