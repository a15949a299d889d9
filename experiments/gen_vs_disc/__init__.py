"""Generative vs discriminative classifiers (Ng & Jordan, 2002): learning_curves, with the
naive-Bayes and logistic-regression code in ``baselines``.

Run from the repository root: ``python -m experiments.gen_vs_disc.learning_curves --help``.
"""
