"""Smoke tests: the linear-model and generative-vs-discriminative experiments run end to end on
the small ``digits`` set (it ships with scikit-learn) and write their figures and JSON."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO


def run(module: str, *args: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_linear_components_smoke(tmp_path):
    run("experiments.linear.components", "--dataset", "digits", "--components", "4",
        "--n-train", "300", "--n-test", "100", "--epochs", "2", "--elbo-particles", "2",
        "--out", str(tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["models"]) == {"pca", "fa", "ica", "nmf"}
    assert [row["epoch"] for row in metrics["models"]["fa"]["curve"]] == [0, 1]
    for name in ("fa", "ica", "nmf"):
        entry = metrics["models"][name]
        assert entry["test_elbo"] == pytest.approx(entry["test_elbo"])  # finite, not NaN
        assert (tmp_path / name / "last.pt").exists()
    # FA's ELBO is a lower bound on its exact log-likelihood (2 particles: Monte-Carlo noise
    # on 100 images is far below the ~1 nat slack of a 2-epoch guide).
    fa = metrics["models"]["fa"]
    assert fa["test_elbo"] < fa["test_loglik"] + 0.5
    assert (tmp_path / "components.png").stat().st_size > 5000


def test_generative_vs_discriminative_smoke(tmp_path):
    run("experiments.gen_vs_disc.learning_curves", "--dataset", "digits", "--features", "pca",
        "--pca-dim", "10", "--sizes", "20", "100", "--repeats", "2", "--out", str(tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["sizes_done"] == [20, 100]
    for name in ("naive_bayes", "logistic_regression"):
        errors = metrics["classifiers"][name]["errors"]
        assert len(errors) == 2 and all(len(row) == 2 for row in errors)
        assert all(0.0 <= e <= 1.0 for row in errors for e in row)
    table = (tmp_path / "table.md").read_text()
    assert "| 20 |" in table and "| 100 |" in table
    assert (tmp_path / "curve.png").stat().st_size > 5000


def test_crossover_sizes_and_table():
    from experiments.gen_vs_disc.baselines import LearningCurves, crossover_sizes, markdown_table

    assert crossover_sizes([10, 20, 50, 100], [0.5, 0.3, 0.2, 0.2], [0.4, 0.35, 0.25, 0.1]) == [
        10, 50
    ]
    curves = LearningCurves([10, 20], 2, errors={"a": np.array([[0.5, 0.3], [0.2, 0.2]])})
    assert "| 10 | 40.00 ± 10.00 |" in markdown_table(curves)


def test_training_subsets_are_seeded_and_hold_two_classes():
    from experiments.gen_vs_disc.baselines import training_subsets

    y = np.array([0] * 50 + [1] * 2)
    first = training_subsets(y, [3, 10], repeats=4, seed=1)
    again = training_subsets(y, [3, 10], repeats=4, seed=1)
    for row_a, row_b in zip(first, again, strict=True):
        for a, b in zip(row_a, row_b, strict=True):
            assert np.array_equal(a, b) and len(np.unique(a)) == len(a)
            assert len(np.unique(y[a])) == 2
    with pytest.raises(ValueError, match="sizes"):
        training_subsets(y, [100], repeats=1)


def test_naive_bayes_learns_faster_when_its_model_is_true():
    """Ng & Jordan's first regime on data drawn from naive Bayes' own model: 2 classes, 40
    independent unit-variance features whose means differ by 0.35 between the classes."""
    from experiments.gen_vs_disc.baselines import learning_curves

    rng = np.random.default_rng(0)

    def draw(n):
        y = rng.integers(0, 2, n)
        return rng.normal(size=(n, 40)) + 0.35 * y[:, None], y

    x, y = draw(3000)
    xt, yt = draw(4000)
    curves = learning_curves(x, y, xt, yt, sizes=[80, 2000], repeats=8, seed=0)
    nb, lr = curves.mean("naive_bayes"), curves.mean("logistic_regression")
    # Bayes error: Phi(-0.35 * sqrt(40) / 2) = 0.134. With 80 examples nearly unregularised
    # logistic regression overfits its 41 weights (error measured 0.28) while naive Bayes is
    # already near its asymptote (0.22); the 0.03 margin is well outside the spread of 8 repeats
    # on 4000 test points. (Below ~20 examples naive Bayes is worse again: its per-class
    # variances come from a handful of points.) With 2000 both are within 0.02 of each other.
    assert nb[0] < lr[0] - 0.03
    assert abs(nb[1] - lr[1]) < 0.02 and max(nb[1], lr[1]) < 0.17
