"""Sketches drawn as vector strokes with matplotlib (imported lazily): the figures of
``pyrovae sketch`` and ``experiments/sketch_rnn``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pyrovae.data.sketches import stroke5_to_stroke3
from pyrovae.plots import pyplot
from pyrovae.runs.provenance import is_main


def strokes(sketch: np.ndarray) -> list[np.ndarray]:
    """Absolute polylines ``[k, 2]`` of one stroke-3 sketch (y down, as drawn on paper)."""
    points = np.cumsum(sketch[:, :2], axis=0)
    ends = np.flatnonzero(sketch[:, 2] > 0.5) + 1
    return [p for p in np.split(points, ends) if len(p) > 0]


def draw(ax, sketch: np.ndarray) -> None:
    for line in strokes(sketch):
        ax.plot(line[:, 0], -line[:, 1], color="black", linewidth=1.0)
    ax.set_aspect("equal")
    ax.axis("off")


def save_sketch_grid(path: Path, rows, titles, title: str,
                     prefix_rows: list[int] | None = None) -> Path:
    """One row of sketches per ``(x [n, T, 5], lengths [n])`` of ``rows``, titled ``titles``;
    with ``prefix_rows``, the first ``prefix_rows[i]`` points of every sketch of row ``i`` in
    black (what was given) and the rest in blue (what the model drew)."""
    plt = pyplot()

    decoded = [stroke5_to_stroke3(x, lengths) for x, lengths in rows]
    ncols = max(len(r) for r in decoded)
    fig, axes = plt.subplots(len(decoded), ncols, figsize=(1.6 * ncols, 1.7 * len(decoded)),
                             squeeze=False)
    for i, (sketches, label) in enumerate(zip(decoded, titles, strict=True)):
        for j in range(ncols):
            axes[i, j].axis("off")
            if j < len(sketches) and prefix_rows is None:
                draw(axes[i, j], sketches[j])
            elif j < len(sketches):
                _draw_split(axes[i, j], sketches[j], prefix_rows[i])
        axes[i, 0].set_title(label, fontsize=8, loc="left")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)  # rank 0 alone writes in a data-parallel run


def save_interpolation(path: Path, ends, decoded, title: str) -> Path:
    """The two end sketches, then the decodings along the line between their latent means."""
    x_ends, l_ends = ends
    x, lengths = decoded
    steps = max(x.shape[1], x_ends.shape[1])
    x, x_ends = (F.pad(t, (0, 0, 0, steps - t.shape[1]), value=0.0) for t in (x, x_ends))
    x[:, decoded[0].shape[1]:, 4] = 1.0  # padded rows are end rows
    x_ends[:, ends[0].shape[1]:, 4] = 1.0
    row = (torch.cat([x_ends[:1], x, x_ends[1:]]), torch.cat([l_ends[:1], lengths, l_ends[1:]]))
    return save_sketch_grid(path, [row], ["test A | interpolation (tau=0.1) | test B"], title)


def _draw_split(ax, sketch: np.ndarray, given: int) -> None:
    points = np.cumsum(sketch[:, :2], axis=0)
    lifted = sketch[:, 2] > 0.5
    for start in range(len(points) - 1):
        if lifted[start]:  # the pen is up between this point and the next
            continue
        colour = "black" if start + 1 < given else "tab:blue"
        ax.plot(points[start:start + 2, 0], -points[start:start + 2, 1], color=colour,
                linewidth=1.0)
    ax.set_aspect("equal")
    ax.axis("off")


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save ``fig`` as ``path`` (folders created) on rank 0 alone, and close it."""
    plt = pyplot()
    path = Path(path)
    if is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
