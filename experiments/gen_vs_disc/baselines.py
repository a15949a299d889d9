"""Generative versus discriminative classifiers: learning curves of naive Bayes and logistic
regression (Ng & Jordan, 2002).

Gaussian naive Bayes models ``p(x, y) = p(y) prod_d N(x_d; mu_yd, sigma2_yd)`` and classifies
with Bayes' rule; logistic regression models ``p(y | x)`` directly. The two define the same
family of decision rules when the class variances are shared (both are linear in ``x``), but
naive Bayes fits it by maximising the *joint* likelihood, which needs O(log D) examples to get
close to its (worse) asymptotic error, while logistic regression maximises the *conditional*
likelihood, needing O(D) examples to reach its (better) asymptote. Hence two regimes: with few
examples the generative model can be ahead; with many the discriminative one wins.

References:
    A. Y. Ng and M. I. Jordan. On discriminative vs. generative classifiers: a comparison of
    logistic regression and naive Bayes. NeurIPS 14, 2002.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

ClassifierFactory = Callable[[], object]


def default_classifiers(
    logistic_c: float = 1e4, max_iter: int = 1000, var_smoothing: float = 1e-9
) -> dict[str, ClassifierFactory]:
    """Factories for ``"naive_bayes"`` (``GaussianNB``) and ``"logistic_regression"``.

    Args:
        logistic_c: inverse L2 strength of logistic regression (default 1e4: nearly
            unregularised, as in Ng & Jordan; scikit-learn's default is 1.0).
        max_iter: L-BFGS iterations for logistic regression (default 1000).
        var_smoothing: ``GaussianNB``'s variance floor, as a fraction of the largest feature
            variance (default 1e-9, scikit-learn's).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB

    return {
        "naive_bayes": lambda: GaussianNB(var_smoothing=var_smoothing),
        "logistic_regression": lambda: LogisticRegression(C=logistic_c, max_iter=max_iter),
    }


def pca_features(
    x_train: np.ndarray, x_test: np.ndarray, num_components: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Project both sets on the top ``num_components`` principal axes of ``x_train`` [N, D].

    PCA uses the training *images* only (no labels), so every classifier may share it.
    """
    from sklearn.decomposition import PCA

    pca = PCA(num_components, random_state=seed).fit(x_train)
    return pca.transform(x_train), pca.transform(x_test)


@dataclass
class LearningCurves:
    """Test errors ``errors[name]`` [len(sizes), repeats] and fit failures per classifier."""

    sizes: list[int]
    repeats: int
    errors: dict[str, np.ndarray] = field(default_factory=dict)
    not_converged: dict[str, int] = field(default_factory=dict)

    def mean(self, name: str) -> np.ndarray:
        return self.errors[name].mean(1)

    def std(self, name: str) -> np.ndarray:
        return self.errors[name].std(1)

    def to_json(self) -> dict:
        """A JSON-able summary: per classifier, the mean/std/all errors at each size."""
        out = dict(sizes=self.sizes, repeats=self.repeats, classifiers={})
        for name, errs in self.errors.items():
            out["classifiers"][name] = dict(
                mean_error=errs.mean(1).tolist(),
                std_error=errs.std(1).tolist(),
                errors=errs.tolist(),
                not_converged=self.not_converged.get(name, 0),
            )
        return out


def training_subsets(
    y: np.ndarray, sizes: Sequence[int], repeats: int, seed: int = 0
) -> list[list[np.ndarray]]:
    """``subsets[i][r]``: ``sizes[i]`` row indices drawn without replacement, for repeat ``r``.

    Draws with ``numpy.random.default_rng(seed)``; a draw holding a single class is redrawn
    (a classifier needs two). Sizes above ``len(y)`` are an error.
    """
    rng = np.random.default_rng(seed)
    n = len(y)
    subsets = []
    for size in sizes:
        if not 2 <= size <= n:
            raise ValueError(f"training-set sizes must be in [2, {n}], got {size}")
        row = []
        for _ in range(repeats):
            idx = rng.choice(n, size, replace=False)
            while len(np.unique(y[idx])) < 2:
                idx = rng.choice(n, size, replace=False)
            row.append(idx)
        subsets.append(row)
    return subsets


def learning_curves(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    sizes: Sequence[int],
    repeats: int = 5,
    seed: int = 0,
    classifiers: Mapping[str, ClassifierFactory] | None = None,
    on_size: Callable[[LearningCurves, int], None] | None = None,
) -> LearningCurves:
    """Test error of each classifier trained on random subsets of each size.

    Every classifier sees the same subsets (:func:`training_subsets`), so their curves differ
    only by the method. Logistic regression's ``ConvergenceWarning`` is counted in
    ``not_converged`` rather than raised.

    Args:
        x_train: the pool of inputs to draw training sets from, [N, D].
        y_train: their labels, [N].
        x_test: held-out inputs, [N_test, D].
        y_test: their labels, [N_test].
        sizes: training-set sizes.
        repeats: random subsets per size (default 5).
        seed: seed of the subsets (default 0).
        classifiers: ``name -> factory`` (default :func:`default_classifiers`).
        on_size: called as ``on_size(curves_so_far, i)`` after size ``i``, e.g. to save
            partial results.
    """
    from sklearn.exceptions import ConvergenceWarning

    classifiers = dict(classifiers or default_classifiers())
    sizes = [int(s) for s in sizes]
    curves = LearningCurves(sizes, repeats)
    for name in classifiers:
        curves.errors[name] = np.full((len(sizes), repeats), np.nan)
        curves.not_converged[name] = 0
    for i, row in enumerate(training_subsets(y_train, sizes, repeats, seed)):
        for r, idx in enumerate(row):
            for name, make in classifiers.items():
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ConvergenceWarning)
                    clf = make().fit(x_train[idx], y_train[idx])
                curves.not_converged[name] += sum(
                    issubclass(w.category, ConvergenceWarning) for w in caught
                )
                curves.errors[name][i, r] = float(np.mean(clf.predict(x_test) != y_test))
        logger.info(
            "n=%d: %s", sizes[i],
            ", ".join(f"{k}={curves.errors[k][i].mean():.4f}" for k in classifiers),
        )
        if on_size is not None:
            on_size(curves, i)
    return curves


def crossover_sizes(sizes: Sequence[int], first: np.ndarray, second: np.ndarray) -> list[int]:
    """Sizes after which the sign of ``first - second`` (mean errors) changes: [size_i, ...]
    such that ``first < second`` at ``sizes[i]`` and not at ``sizes[i + 1]``, or vice versa."""
    diff = np.sign(np.asarray(first) - np.asarray(second))
    return [int(sizes[i]) for i in range(len(diff) - 1) if diff[i] != 0 and diff[i] != diff[i + 1]]


def markdown_table(curves: LearningCurves) -> str:
    """The curves as a markdown table: size, then mean +- std test error (%) per classifier."""
    names = list(curves.errors)
    lines = [
        "| training examples | " + " | ".join(f"{n} error (%)" for n in names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for i, size in enumerate(curves.sizes):
        cells = [
            f"{100 * curves.mean(n)[i]:.2f} ± {100 * curves.std(n)[i]:.2f}" for n in names
        ]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
