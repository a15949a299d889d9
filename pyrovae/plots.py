"""Image grids a person can read: tiles upscaled nearest-neighbour (each image pixel a block of
``scale`` x ``scale`` screen pixels), a title, and labels for rows and columns.

Used by the ``pyrovae`` command (``vae sample``, ``m2 sample``, ``impute``) and by the
experiment scripts (``experiments/figures.py``: rows of images, tables, side-by-side panels
from `save_image_panels`). Only numpy is imported here; matplotlib is
imported when a figure is drawn, with the non-interactive ``Agg`` backend.

Images are flattened ``[N, D]`` tensors or arrays with values in [0, 1]; ``image_shape`` is
``(H, W)`` or ``(1, H, W)`` for grey images (drawn black on white) and ``(3, H, W)`` for colour
ones (flattened channel-major, drawn in RGB).

Example::

    from pyrovae.plots import save_image_grid
    save_image_grid("samples.png", model.sample(64), (28, 28), nrow=8, title="VAE samples")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "as_images", "image_grid", "image_grid_figure", "image_panels_figure", "save_image_grid",
    "save_image_panels",
]

#: The default scale draws each image at least this many screen pixels across.
MIN_TILE_PIXELS = 96
FONT_SIZE = 10  # points


def to_numpy(images) -> np.ndarray:
    """A float numpy copy of a tensor or array (detached, on the CPU)."""
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()
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


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window
    import matplotlib.pyplot as plt

    return plt


def default_scale(h: int, w: int) -> int:
    """Screen pixels per image pixel for ``h`` x ``w`` images: at least 3, and enough for tiles
    of ``MIN_TILE_PIXELS`` (28 x 28 digits at 4, 8 x 8 ones at 12)."""
    return max(3, math.ceil(MIN_TILE_PIXELS / max(h, w)))


def draw_array(
    grid: np.ndarray,
    scale: int,
    *,
    title: str | None = None,
    row_labels: Sequence[tuple[float, str]] = (),
    col_labels: Sequence[tuple[float, str]] = (),
    col_width: float = 0.0,
    dpi: int = 100,
):
    """A figure of the array ``grid`` (grey ``[H, W]`` drawn black on white, or RGB
    ``[H, W, 3]``) at ``scale`` screen pixels per array pixel, nearest-neighbour; labels are
    ``(position, text)`` pairs in array coordinates (row centres on the left, column centres
    on top, each column ``col_width`` array pixels wide: a wider label gets a smaller font)."""
    plt = pyplot()
    char = 0.62 * FONT_SIZE * dpi / 72  # a character's width in pixels, about
    line = 1.5 * FONT_SIZE * dpi / 72  # a line's height in pixels
    width, height = grid.shape[1] * scale, grid.shape[0] * scale
    left = 8 + (max(len(str(s)) for _, s in row_labels) * char + 6 if row_labels else 0)
    top = 8 + (1.2 * line if title else 0) + (line if col_labels else 0)
    right = bottom = 8
    # A title wider than the grid widens the figure, the grid centred under it.
    extra = max(0.0, len(title or "") * char * 1.05 + 16 - (left + width + right))
    left, right = left + extra / 2, right + extra / 2
    fig_w, fig_h = left + width + right, top + height + bottom
    fig = plt.figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    ax = fig.add_axes((left / fig_w, bottom / fig_h, width / fig_w, height / fig_h))
    if grid.ndim == 2:
        ax.imshow(grid, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(np.clip(grid, 0.0, 1.0), interpolation="nearest")
    ax.set_axis_off()
    for y, label in row_labels:
        ax.text(-1.0, y, str(label), ha="right", va="center", fontsize=FONT_SIZE)
    for x, label in col_labels:
        size = min(FONT_SIZE, FONT_SIZE * col_width * scale / (len(str(label)) * char * 1.1))
        ax.text(x, -1.0, str(label), ha="center", va="bottom", fontsize=size)
    if title:
        fig.text(0.5, 1 - 6 / fig_h, title, ha="center", va="top", fontsize=FONT_SIZE + 1)
    return fig


def check_scale(scale: int | None) -> None:
    if scale is not None and (scale < 1 or int(scale) != scale):
        raise ValueError(f"scale must be a positive integer, got {scale}")


def image_grid_figure(
    images,
    image_shape: Sequence[int] = (28, 28),
    nrow: int | None = None,
    *,
    title: str | None = None,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    scale: int | None = None,
    padding: int = 2,
    dpi: int = 100,
):
    """A matplotlib figure of `image_grid` drawn at ``scale`` screen pixels per image pixel
    (nearest-neighbour, so pixels stay sharp; default `default_scale`), with an optional
    ``title`` above, one label per row of images on the left (``row_labels``) and one per
    column on top (``col_labels``, in a smaller font where one is wider than its tile).

    The figure's size is set in pixels at ``dpi``, so that saved at that ``dpi`` (as
    `save_image_grid` does) the grid is exactly ``scale`` times its size in pixels.
    """
    check_scale(scale)
    arr = as_images(images, image_shape)
    n, h, w = arr.shape[:3]
    nrow = int(math.ceil(math.sqrt(n))) if nrow is None else int(nrow)
    nrows = math.ceil(n / nrow)
    for labels, count, what in [(row_labels, nrows, "rows"), (col_labels, nrow, "columns")]:
        if labels is not None and len(labels) != count:
            raise ValueError(f"need {count} labels for {count} {what}, got {len(labels)}")
    # Light grey lines part the tiles (white would merge with white backgrounds).
    grid = image_grid(images, image_shape, nrow, padding,
                      pad_value=0.15 if arr.ndim == 3 else 0.85)
    # Image pixel centres are at integer array coordinates; a tile's centre is half a tile in.
    rows = [(padding + r * (h + padding) + (h - 1) / 2, s) for r, s in enumerate(row_labels or ())]
    cols = [(padding + c * (w + padding) + (w - 1) / 2, s) for c, s in enumerate(col_labels or ())]
    return draw_array(grid, scale or default_scale(h, w), title=title, row_labels=rows,
                      col_labels=cols, col_width=w, dpi=dpi)


def image_panels_figure(
    panels: Sequence,
    image_shape: Sequence[int] = (28, 28),
    nrow: int | None = None,
    *,
    titles: Sequence[str],
    title: str | None = None,
    scale: int | None = None,
    padding: int = 2,
    gap: int = 6,
    dpi: int = 100,
):
    """Several sets of images side by side (e.g. samples for several latent sizes), each an
    `image_grid` of ``nrow`` images per row under its own title (``titles``), ``gap`` image
    pixels apart, drawn as `image_grid_figure` draws one grid (``scale``, ``title``)."""
    check_scale(scale)
    if len(panels) != len(titles):
        raise ValueError(f"need one title per panel: {len(panels)} panels, {len(titles)} titles")
    grey = as_images(panels[0], image_shape).ndim == 3
    grids = [image_grid(p, image_shape, nrow, padding, pad_value=0.15 if grey else 0.85)
             for p in panels]
    height = max(g.shape[0] for g in grids)
    blank = 0.0 if grey else 1.0  # white
    parts, centres, x = [], [], 0
    for i, g in enumerate(grids):
        if i:
            parts.append(np.full((height, gap, *g.shape[2:]), blank, dtype=np.float32))
            x += gap
        below = np.full((height - g.shape[0], *g.shape[1:]), blank, dtype=np.float32)
        parts.append(np.concatenate([g, below]))
        centres.append(x + (g.shape[1] - 1) / 2)
        x += g.shape[1]
    h, w = as_images(panels[0], image_shape).shape[1:3]
    return draw_array(np.concatenate(parts, axis=1), scale or default_scale(h, w), title=title,
                      col_labels=list(zip(centres, titles, strict=True)),
                      col_width=min(g.shape[1] for g in grids), dpi=dpi)


def save_image_grid(path: str | Path, images, image_shape: Sequence[int] = (28, 28),
                    nrow: int | None = None, **options) -> Path:
    """Save `image_grid_figure` of ``images`` (``options``: ``title``, ``row_labels``,
    ``col_labels``, ``scale``, ``padding``, ``dpi``) as a PNG at ``path`` (its folder
    created); returns the path."""
    return save(image_grid_figure(images, image_shape, nrow, **options), path)


def save_image_panels(path: str | Path, panels: Sequence, image_shape: Sequence[int] = (28, 28),
                      nrow: int | None = None, **options) -> Path:
    """Save `image_panels_figure` of ``panels`` (``options``: ``titles``, ``title``, ``scale``,
    ``padding``, ``gap``, ``dpi``) as a PNG at ``path`` (its folder created); returns the
    path."""
    return save(image_panels_figure(panels, image_shape, nrow, **options), path)


def save(fig, path: str | Path) -> Path:
    """Save ``fig`` at its own ``dpi`` (so pixels stay the size the figure set) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi)
    pyplot().close(fig)
    return path
