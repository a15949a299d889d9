"""Figure helpers shared by the experiments: image grids and tables, latent scatters, curves.

Only numpy is imported at module level; matplotlib is imported inside the functions that draw,
with the non-interactive ``Agg`` backend. Images are flattened ``[N, H*W]`` arrays or tensors
with values in [0, 1]; ``image_shape`` gives ``(H, W)`` or ``(1, H, W)`` for grey images (drawn
black on white) and ``(3, H, W)`` for colour ones (flattened channel-major, drawn in RGB).

Example::

    from experiments.figures import save_image_grid
    save_image_grid("samples.png", model.sample(100), image_shape=(28, 28), nrow=10)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_numpy(images) -> np.ndarray:
    """A float numpy copy of a tensor or array (detached, on the CPU)."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    return np.asarray(images, dtype=np.float32)


def as_images(images, image_shape: Sequence[int] = (28, 28)) -> np.ndarray:
    """Flattened images as ``[N, H, W]`` (grey: ``image_shape`` ``(H, W)`` or ``(1, H, W)``)
    or ``[N, H, W, 3]`` (colour: ``(3, H, W)``, flattened channel-major), as ``imshow`` takes
    them."""
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 2:
        return to_numpy(images).reshape(-1, *shape)
    if len(shape) != 3 or shape[0] != 3:
        raise ValueError(f"image_shape must be (H, W), (1, H, W) or (3, H, W), got {shape}")
    return to_numpy(images).reshape(-1, *shape).transpose(0, 2, 3, 1)


def show(ax, pixels: np.ndarray) -> None:
    """``imshow`` of a grid from `image_grid`: grey black on white (``gray_r``), colour as RGB."""
    if pixels.ndim == 2:
        ax.imshow(pixels, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(np.clip(pixels, 0.0, 1.0), interpolation="nearest")


def image_grid(
    images,
    image_shape: Sequence[int] = (28, 28),
    nrow: int | None = None,
    padding: int = 2,
    pad_value: float = 1.0,
) -> np.ndarray:
    """Tile images into one array (row-major, ``nrow`` images per row).

    Args:
        images: ``[N, D]`` flattened images with values in [0, 1] (tensor or array), or
            ``[N, H, W]`` grey ones.
        image_shape: ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` (default ``(28, 28)``).
        nrow: images per row (default ``ceil(sqrt(N))``).
        padding: pixels between images (default 2).
        pad_value: value of the padding (default 1.0).

    Returns:
        ``[rows * (H + padding) + padding, nrow * (W + padding) + padding]`` float array for
        grey images, with a last axis of 3 (RGB) for colour ones; missing cells of the last
        row are filled with ``pad_value``.
    """
    arr = as_images(images, image_shape)
    n, h, w = arr.shape[:3]
    if n == 0:
        raise ValueError("image_grid needs at least one image")
    nrow = int(np.ceil(np.sqrt(n))) if nrow is None else int(nrow)
    nrows = int(np.ceil(n / nrow))
    grid = np.full(
        (nrows * (h + padding) + padding, nrow * (w + padding) + padding, *arr.shape[3:]),
        pad_value,
        dtype=np.float32,
    )
    for i in range(n):
        r, c = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top : top + h, left : left + w] = arr[i]
    return grid


def save_image_grid(
    path: str | Path,
    images,
    image_shape: Sequence[int] = (28, 28),
    nrow: int | None = None,
    title: str | None = None,
    scale: float = 0.35,
) -> Path:
    """Save :func:`image_grid` of ``images`` as a PNG (black digits on white: ``gray_r``).

    ``scale`` is inches per image (default 0.35). Returns the path.
    """
    grid = image_grid(images, image_shape, nrow)
    n = as_images(images, image_shape).shape[0]
    nrow = int(np.ceil(np.sqrt(n))) if nrow is None else int(nrow)
    ncols_rows = (nrow, int(np.ceil(n / nrow)))
    plt = pyplot()
    width = max(2.0, scale * ncols_rows[0])
    height = max(2.0, scale * ncols_rows[1]) + 0.4 * bool(title)
    fig, ax = plt.subplots(figsize=(width, height))
    show(ax, grid)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def save_grids_side_by_side(
    path: str | Path,
    grids: Sequence,
    titles: Sequence[str],
    image_shape: Sequence[int] = (28, 28),
    nrow: int | None = None,
    panel_inches: float = 3.0,
) -> Path:
    """One panel per set of images (e.g. samples for several latent sizes), side by side."""
    if len(grids) != len(titles):
        raise ValueError("need one title per grid")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(grids), figsize=(panel_inches * len(grids), panel_inches + 0.4))
    axes = np.atleast_1d(axes)
    for ax, images, title in zip(axes, grids, titles, strict=True):
        show(ax, image_grid(images, image_shape, nrow))
        ax.set_title(title, fontsize=11)
        ax.axis("off")
    return save_figure(fig, path)


def save_image_rows(
    path: str | Path,
    rows: Sequence,
    labels: Sequence[str] | None = None,
    image_shape: Sequence[int] = (28, 28),
    scale: float = 0.6,
    title: str | None = None,
) -> Path:
    """Rows of images of equal length (interpolations, original vs reconstruction), each
    labelled on the left, under an optional ``title``."""
    rows = [to_numpy(r).reshape(-1, int(np.prod(image_shape))) for r in rows]
    ncol = max(r.shape[0] for r in rows)
    plt = pyplot()
    fig, axes = plt.subplots(
        len(rows), 1, figsize=(scale * ncol + 1.5, scale * len(rows) + 0.2), squeeze=False
    )
    for i, (ax, r) in enumerate(zip(axes[:, 0], rows, strict=True)):
        show(ax, image_grid(r, image_shape, nrow=ncol))
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if labels is not None:
            ax.set_ylabel(labels[i], rotation=0, ha="right", va="center", fontsize=9)
    if title:
        axes[0, 0].set_title(title, fontsize=10)
    return save_figure(fig, path)


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
                         title=None, inches=0.55) -> Path:
    """Images ``[R, C, H*W]`` (values in [0, 1]) as an R x C table with optional headers."""
    images = to_numpy(images)
    n_rows, n_cols = images.shape[:2]
    plt = pyplot()
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(inches * n_cols + 0.6,
                                                      inches * n_rows + 0.5 + 0.3 * bool(title)),
                             squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r, c]
            show(ax, as_images(images[r, c], image_shape)[0])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and column_titles:
                ax.set_title(column_titles[c], fontsize=8)
            if c == 0 and row_titles:
                ax.set_ylabel(row_titles[r], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    top = 1 - 0.35 / (inches * n_rows + 0.8) if title else 1
    fig.tight_layout(pad=0.3, h_pad=0.1, w_pad=0.1, rect=(0, 0, 1, top))
    return save_figure(fig, path, dpi=110, tight=False)


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
