"""Generative vs discriminative: naive Bayes vs logistic regression as the training set grows.

Trains both classifiers (scikit-learn) on random subsets of the training images of each size,
several repeats per size, and writes the test error as a function of the size: ``curve.png``,
``table.md`` and ``metrics.json`` (rewritten after every size).

    python -m experiments.gen_vs_disc.learning_curves --dataset mnist --features pca --out DIR

Both classifiers are scikit-learn's and run on the CPU (no ``--device``).

References:
    A. Y. Ng and M. I. Jordan. On discriminative vs. generative classifiers: a comparison of
    logistic regression and naive Bayes. NeurIPS 14, 2002.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from experiments.figures import pyplot, save_figure
from experiments.gen_vs_disc.baselines import (
    crossover_sizes,
    default_classifiers,
    learning_curves,
    markdown_table,
    pca_features,
)
from pyrovae.data import load_dataset
from pyrovae.runs.provenance import provenance, write_json
from pyrovae.runs.script import run_script

LABELS = {"naive_bayes": "Gaussian naive Bayes (generative)",
          "logistic_regression": "logistic regression (discriminative)"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "digits"])
    p.add_argument("--features", default="pca", choices=["pixels", "pca"],
                   help="raw pixels, or the top --pca-dim principal components (default pca)")
    p.add_argument("--pca-dim", type=int, default=30)
    p.add_argument("--sizes", type=int, nargs="+",
                   default=[10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 60000])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--logistic-c", type=float, default=1e4,
                   help="inverse L2 strength (default 1e4: nearly unregularised)")
    p.add_argument("--var-smoothing", type=float, default=1e-9)
    p.add_argument("--max-test", type=int, default=None, help="evaluate on the first M test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/gen_vs_disc"))
    return p.parse_args(argv)


def load_features(args) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    train, test = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test")
    x, y = train.x.numpy().astype(np.float64), train.y.numpy()
    xt, yt = test.x.numpy().astype(np.float64), test.y.numpy()
    if args.max_test is not None:
        xt, yt = xt[: args.max_test], yt[: args.max_test]
    if args.features == "pca":
        x, xt = pca_features(x, xt, args.pca_dim, seed=args.seed)
    return x, y, xt, yt


def plot(curves, path: Path, title: str) -> None:
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for name, errs in curves.errors.items():
        done = ~np.isnan(errs).any(1)
        sizes = np.asarray(curves.sizes)[done]
        mean, std = 100 * errs[done].mean(1), 100 * errs[done].std(1)
        ax.plot(sizes, mean, marker="o", label=LABELS.get(name, name))
        ax.fill_between(sizes, mean - std, mean + std, alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("training examples")
    ax.set_ylabel("test error (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    x, y, xt, yt = load_features(args)
    sizes = [s for s in args.sizes if s <= len(y)]
    features = f"PCA-{args.pca_dim}" if args.features == "pca" else "pixels"
    title = f"{args.dataset} ({features}): mean ± std over {args.repeats} training sets"
    metrics = dict(
        **provenance(), dataset=args.dataset, features=features,
        num_train_pool=len(y), num_test=len(yt),
        logistic_c=args.logistic_c, var_smoothing=args.var_smoothing, seed=args.seed,
    )

    def save(curves, i):
        done = curves.sizes[: i + 1]
        nb, lr = (curves.mean(k)[: i + 1] for k in ("naive_bayes", "logistic_regression"))
        better = [s for s, a, b in zip(done, nb, lr, strict=True) if a < b]
        metrics.update(curves.to_json(), sizes_done=done, seconds=time.perf_counter() - started,
                       naive_bayes_better_at=better, crossovers=crossover_sizes(done, nb, lr))
        write_json(args.out / "metrics.json", metrics)
        plot(curves, args.out / "curve.png", title)

    classifiers = default_classifiers(args.logistic_c, var_smoothing=args.var_smoothing)
    curves = learning_curves(x, y, xt, yt, sizes, args.repeats, args.seed, classifiers, save)
    (args.out / "table.md").write_text(
        f"Test error on {len(yt)} {args.dataset} test images ({features}), mean ± std over "
        f"{args.repeats} random training sets per size.\n\n" + markdown_table(curves)
    )
    return metrics


if __name__ == "__main__":
    run_script(main)
