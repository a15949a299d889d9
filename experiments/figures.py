"""Figure helpers shared by the experiments: image grids and scatter plots of latent codes.

Only numpy is imported at module level; matplotlib is imported inside the functions that draw,
with the non-interactive ``Agg`` backend. Images are flattened ``[N, H*W]`` arrays or tensors
with values in [0, 1] (``image_shape`` gives ``(H, W)``).

Example::

    from _plots import save_image_grid
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


def image_grid(
    images,
    image_shape: Sequence[int] = (28, 28),
    nrow: int | None = None,
    padding: int = 2,
    pad_value: float = 1.0,
) -> np.ndarray:
    """Tile images into one 2-D array (row-major, ``nrow`` images per row).

    Args:
        images: ``[N, H*W]`` or ``[N, H, W]`` values in [0, 1] (tensor or array).
        image_shape: ``(H, W)`` (default ``(28, 28)``).
        nrow: images per row (default ``ceil(sqrt(N))``).
        padding: pixels between images (default 2).
        pad_value: value of the padding (default 1.0: white lines between images).

    Returns:
        ``[rows * (H + padding) + padding, nrow * (W + padding) + padding]`` float array;
        missing cells of the last row are filled with ``pad_value``.
    """
    arr = to_numpy(images)
    h, w = (int(s) for s in image_shape)
    arr = arr.reshape(-1, h, w)
    n = arr.shape[0]
    if n == 0:
        raise ValueError("image_grid needs at least one image")
    nrow = int(np.ceil(np.sqrt(n))) if nrow is None else int(nrow)
    nrows = int(np.ceil(n / nrow))
    grid = np.full(
        (nrows * (h + padding) + padding, nrow * (w + padding) + padding),
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
    n = to_numpy(images).reshape(-1, *image_shape).shape[0]
    nrow = int(np.ceil(np.sqrt(n))) if nrow is None else int(nrow)
    ncols_rows = (nrow, int(np.ceil(n / nrow)))
    plt = pyplot()
    width = max(2.0, scale * ncols_rows[0])
    height = max(2.0, scale * ncols_rows[1]) + 0.4 * bool(title)
    fig, ax = plt.subplots(figsize=(width, height))
    ax.imshow(grid, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
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
        ax.imshow(image_grid(images, image_shape, nrow), cmap="gray_r", vmin=0, vmax=1,
                  interpolation="nearest")
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
    rows = [to_numpy(r).reshape(-1, *image_shape) for r in rows]
    ncol = max(r.shape[0] for r in rows)
    plt = pyplot()
    fig, axes = plt.subplots(
        len(rows), 1, figsize=(scale * ncol + 1.5, scale * len(rows) + 0.2), squeeze=False
    )
    for i, (ax, r) in enumerate(zip(axes[:, 0], rows, strict=True)):
        ax.imshow(image_grid(r, image_shape, nrow=ncol), cmap="gray_r", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if labels is not None:
            ax.set_ylabel(labels[i], rotation=0, ha="right", va="center", fontsize=9)
    if title:
        axes[0, 0].set_title(title, fontsize=10)
    return save_figure(fig, path)


def save_latent_scatter(
    path: str | Path,
    codes,
    labels,
    title: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Scatter of 2-D latent codes ``[N, 2]`` coloured by integer ``labels`` [N]."""
    codes, labels = to_numpy(codes), to_numpy(labels).astype(int)
    if codes.ndim != 2 or codes.shape[1] != 2:
        raise ValueError(f"codes must be [N, 2], got {codes.shape}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab10")
    for c in classes:
        keep = labels == c
        name = class_names[c] if class_names is not None else str(c)
        ax.scatter(codes[keep, 0], codes[keep, 1], s=3, alpha=0.6, color=cmap(c % 10), label=name)
    ax.legend(markerscale=4, fontsize=8, loc="best", ncol=2)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` as ``path`` (folders created), close it and return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
