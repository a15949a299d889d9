"""Scripts that reproduce the papers' numbers and figures, grouped by the system they study.

Run them from the repository root as modules, e.g. ``python -m experiments.vae.headline``;
the run layer ``pyrovae.runs`` (which the ``pyrovae`` command shares) holds provenance, atomic
JSON, the run options and each model family's data, build and metrics, and
``experiments.figures`` the figures. Groups: ``vae``, ``m2``, ``linear``, ``gen_vs_disc``.
"""
