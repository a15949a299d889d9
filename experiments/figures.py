"""Figure helpers shared by the experiments: image grids and tables, latent scatters, curves.

Only numpy is imported at module level; matplotlib is imported inside the functions that draw,
with the non-interactive ``Agg`` backend. Images are flattened ``[N, H*W]`` arrays or tensors
with values in [0, 1]; ``image_shape`` gives ``(H, W)`` or ``(1, H, W)`` for grey images (drawn
black on white) and ``(3, H, W)`` for colour ones (flattened channel-major, drawn in RGB).
Image grids come from the library's [`pyrovae.plots`][], which the ``pyrovae`` command uses
too: upscaled nearest-neighbour, with a title and row and column labels.

Example::

    from experiments.figures import save_image_grid
    save_image_grid("samples.png", model.sample(100), image_shape=(28, 28), nrow=10)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pyrovae import plots
from pyrovae.plots import as_images, image_grid, to_numpy

__all__ = ["as_images", "image_grid", "to_numpy"]  # re-exported for the scripts


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_image_grid(
    path: str | Path,
    images,
    image_shape: Sequence[int] = (28, 28),
    nrow: int | None = None,
    title: str | None = None,
    **labels,
) -> Path:
    """Save [`pyrovae.plots.save_image_grid`][] of ``images`` as a PNG: upscaled
    nearest-neighbour, black on white, under ``title``, with ``labels`` (``row_labels``,
    ``col_labels``, ``scale``). In a data-parallel run, rank 0 alone saves. Returns the path."""
    from pyrovae.runs.provenance import is_main

    if not is_main():
        return Path(path)
    return plots.save_image_grid(path, images, image_shape, nrow, title=title, **labels)


def save_grids_side_by_side(
    path: str | Path,
    grids: Sequence,
    titles: Sequence[str],
    image_shape: Sequence[int] = (28, 28),
    nrow: int | None = None,
    scale: int | None = None,
) -> Path:
    """One panel per set of images (e.g. samples for several latent sizes), side by side, each
    under its title: [`pyrovae.plots.save_image_panels`][], upscaled nearest-neighbour (``scale``
    screen pixels per image pixel, default at least 3). Rank 0 alone saves."""
    from pyrovae.runs.provenance import is_main

    if not is_main():
        return Path(path)
    return plots.save_image_panels(path, grids, image_shape, nrow, titles=titles, scale=scale)


def save_image_rows(
    path: str | Path,
    rows: Sequence,
    labels: Sequence[str] | None = None,
    image_shape: Sequence[int] = (28, 28),
    scale: int | None = None,
    title: str | None = None,
    col_labels: Sequence[str] | None = None,
) -> Path:
    """Rows of images of equal length (interpolations, original vs reconstruction) as one
    upscaled grid (`save_image_grid`), each row labelled on the left (``labels``), each column
    on top (``col_labels``), under an optional ``title``."""
    rows = [to_numpy(r).reshape(-1, int(np.prod(image_shape))) for r in rows]
    lengths = {r.shape[0] for r in rows}
    if len(lengths) != 1:
        raise ValueError(f"rows must have equal lengths, got {sorted(lengths)}")
    return save_image_grid(path, np.concatenate(rows), image_shape, nrow=lengths.pop(),
                           title=title, row_labels=labels, col_labels=col_labels, scale=scale)


def _scatter_by_class(ax, codes, labels, class_names=None, size=3.0, alpha=0.6) -> None:
    """Points ``codes`` [N, 2] on ``ax``, one colour (tab10) and legend entry per class."""
    codes, labels = to_numpy(codes), to_numpy(labels).astype(int)
    if codes.ndim != 2 or codes.shape[1] != 2:
        raise ValueError(f"codes must be [N, 2], got {codes.shape}")
    cmap = pyplot().get_cmap("tab10")
    for c in np.unique(labels):
        keep = labels == c
        name = class_names[c] if class_names is not None else str(c)
        ax.scatter(codes[keep, 0], codes[keep, 1], s=size, alpha=alpha, color=cmap(c % 10),
                   label=name)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")


def save_latent_scatter(
    path: str | Path,
    codes,
    labels,
    title: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Scatter of 2-D latent codes ``[N, 2]`` coloured by integer ``labels`` [N]."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    _scatter_by_class(ax, codes, labels, class_names)
    ax.legend(markerscale=4, fontsize=8, loc="best", ncol=2)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def save_latent_panels(path: str | Path, panels: Sequence[tuple[str, object]], labels) -> Path:
    """2-D codes of the same points under several models, side by side: ``panels`` holds
    ``(title, codes [N, 2])`` pairs, ``labels`` [N] colours the points; one legend at the right."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    for ax, (title, codes) in zip(axes[0], panels, strict=True):
        _scatter_by_class(ax, codes, labels, size=2.0, alpha=0.5)
        ax.set_title(title, fontsize=10)
    axes[0, -1].legend(markerscale=5, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return save_figure(fig, path, dpi=110)


def save_table_of_images(path, images, image_shape, column_titles=(), row_titles=(),
                         title=None, scale: int | None = None) -> Path:
    """Images ``[R, C, H*W]`` (values in [0, 1]) as an R x C upscaled grid
    (`save_image_grid`) with optional column and row headers and a title."""
    images = to_numpy(images)
    n_rows, n_cols = images.shape[:2]
    return save_image_grid(path, images.reshape(n_rows * n_cols, -1), image_shape, nrow=n_cols,
                           title=title, row_labels=list(row_titles) or None,
                           col_labels=list(column_titles) or None, scale=scale)


def save_learning_curve(path, curve: list[dict], title: str = "") -> Path:
    """Validation accuracy, test error (never used for selection) and seconds per epoch of a
    semi-supervised run's history rows."""
    epochs = [row["epoch"] for row in curve]
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(epochs, [100 * row["val_accuracy"] for row in curve], label="validation accuracy")
    if "test_error_current" in curve[0]:
        left.plot(epochs, [100 * (1 - row["test_error_current"]) for row in curve],
                  label="test accuracy (not used for selection)", alpha=0.7)
    best = max(curve, key=lambda row: row["val_accuracy"])
    left.axvline(best["epoch"], color="grey", ls=":", label=f"selected: epoch {best['epoch']}")
    left.set_xlabel("epoch")
    left.set_ylabel("%")
    left.legend(fontsize=8)
    right.plot(epochs, [row["seconds"] for row in curve], marker=".")
    right.set_xlabel("epoch")
    right.set_ylabel("training seconds per epoch")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=110)


def save_figure(fig, path: str | Path, dpi: int = 120, tight: bool = True) -> Path:
    """Save ``fig`` as ``path`` (folders created; ``tight_layout`` first unless ``tight=False``),
    close it and return the path. In a data-parallel run, rank 0 alone saves."""
    from pyrovae.runs.provenance import is_main

    plt = pyplot()
    path = Path(path)
    if not is_main():
        plt.close(fig)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
