"""Redraw committed image-grid figures whose models were not committed, readable at 100 % zoom.

Some figures in ``results/`` were drawn at one or two screen pixels per image pixel, and the
models that made them were never committed, so they cannot be drawn afresh. Their grids were
drawn nearest-neighbour at more than one screen pixel per image pixel, so every image pixel is
still in the PNG: this script finds the lines between the tiles, reads each image pixel at its
centre, checks that the lines read back as lines, and hands the images to the experiment's own
figure function (upscaled, titled, labelled), so the figure is what a fresh run would draw. The
images are what they were (grey levels to 1/255); only their drawing changes.

The figures are read as committed at ``SOURCE`` (so the script can run again after it has
redrawn them). Labels come from the run's JSON (latent sizes, attribute scales, flip rates)
and from the script that drew the figure (which classes it picked).

Example::

    python -m scripts.rerender_grids              # every figure below, in place
    python -m scripts.rerender_grids --check      # read them back only, write nothing
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIDE = 28  # every figure below shows 28 x 28 images
SOURCE = "2a101ab"  # the last commit with the figures as first drawn; read from there
MATCHED: list[float] = []  # per grid read: the share of its screen pixels that match


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(first, last)`` index of each run of True in a 1-D mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0] - 1, strict=True))


def screen_of(is_line: np.ndarray, same_as_next: np.ndarray, grid: Grid, count: int,
              what: str):
    """Where one axis of the grid lies on screen: ``(pixel, shows)``, for each image pixel
    along the axis the screen pixel at its centre, and for each screen pixel the image pixel
    it shows (-1 off the grid).

    The drawing maps image coordinate ``d`` to screen ``offset + scale * d`` and paints each
    screen pixel with the image pixel under its centre. ``is_line`` marks the screen pixels
    that are tile lines along this axis, ``same_as_next`` those equal to the next one all
    along the grid. Of the maps near a straight fit to the lines' centres, the one chosen
    puts no two differing screen pixels in one image pixel, predicts the most of ``is_line``,
    and is the nearest to the fit."""
    found = runs(is_line)
    centres = grid.line_centres(count)
    if len(found) != len(centres):
        raise ValueError(f"{what}: found {len(found)} lines, expected {len(centres)}")
    scale, offset = np.polyfit(centres, [(a + b + 1) / 2 for a, b in found], 1)
    if scale <= 1.0:
        raise ValueError(f"{what}: {scale:.2f} screen pixels per image pixel")
    size = grid.size(count)
    line_of = np.zeros(size + 1, dtype=bool)  # image pixels that are line; the last: off grid
    line_of[:-1] = [grid.tile_index(i) < 0 for i in range(size)]
    centre = np.arange(len(is_line)) + 0.5
    best = None
    for s in scale + np.linspace(-0.02, 0.02, 81):
        for o in offset + np.linspace(-1.0, 1.0, 81):
            shows = np.floor((centre - o) / s).astype(int)
            shows[(shows < 0) | (shows >= size)] = -1
            joined = (shows[1:] == shows[:-1]) & (shows[1:] >= 0)
            rank = (-int((joined & ~same_as_next).sum()), int((line_of[shows] == is_line).sum()),
                    -abs(s - scale) - abs(o - offset))
            if best is None or rank > best[0]:
                best = (rank, shows)
    shows = best[1]
    pixel = np.array([int(np.median(np.nonzero(shows == i)[0])) for i in range(size)])
    return pixel, shows


def check_blocks(shown: np.ndarray, pixels: np.ndarray, rows, cols, what: str) -> float:
    """Nearest-neighbour drawing paints each image pixel as a block of equal screen pixels:
    each screen pixel of the grid must hold the grey read for the image pixel it shows. The
    drawing's own rounding puts a few whole screen rows or columns one image pixel over from
    the straight map (under 1 % of the screen pixels in the figures here), so an image pixel
    whose block is a single such screen line may be read from its neighbour. Returns the share
    that matches; raises ``ValueError`` below 99 %."""
    ys, xs = np.nonzero(rows >= 0)[0], np.nonzero(cols >= 0)[0]
    drawn = pixels[np.ix_(rows[ys], cols[xs])]
    same = float((np.abs(drawn - shown[np.ix_(ys, xs)]) < 1).mean())
    if same < 0.99:
        raise ValueError(f"{what}: only {same:.2%} of the grid's screen pixels match")
    return same


@dataclass
class Grid:
    """A grid of ``ny`` x ``nx`` tiles of SIDE x SIDE pixels, lines ``padding`` wide between
    them and around them (``tail``: one line after each tile only, as the denoising mosaic)."""

    ny: int
    nx: int
    padding: int = 2
    tail: bool = False

    def line_centres(self, n: int) -> np.ndarray:
        step = SIDE + self.padding
        if self.tail:
            return np.arange(n) * step + SIDE + self.padding / 2
        return np.arange(n + 1) * step + self.padding / 2

    def tile_index(self, i: int) -> int:
        """The pixel within its tile of image pixel ``i`` along an axis, -1 on a line."""
        offset = i - (0 if self.tail else self.padding)
        within = offset % (SIDE + self.padding)
        return within if offset >= 0 and within < SIDE else -1

    def size(self, n: int) -> int:
        return n * (SIDE + self.padding) + (0 if self.tail else self.padding)

    def tiles(self, pixels: np.ndarray) -> np.ndarray:
        """``[ny * nx, SIDE * SIDE]`` images from the data-pixel array of the grid."""
        first = 0 if self.tail else self.padding
        step = SIDE + self.padding
        out = [pixels[first + r * step:first + r * step + SIDE,
                      first + c * step:first + c * step + SIDE].reshape(-1)
               for r in range(self.ny) for c in range(self.nx)]
        return np.stack(out)

    def lines_of(self, pixels: np.ndarray) -> np.ndarray:
        """The data pixels of the lines."""
        mask = np.ones(pixels.shape, dtype=bool)
        first = 0 if self.tail else self.padding
        step = SIDE + self.padding
        for r in range(self.ny):
            for c in range(self.nx):
                mask[first + r * step:first + r * step + SIDE,
                     first + c * step:first + c * step + SIDE] = False
        return pixels[mask]


def read_grid(grey: np.ndarray, grid: Grid, line: Callable[[np.ndarray], np.ndarray],
              what: str, box=None) -> np.ndarray:
    """The tiles of ``grid`` inside ``box`` (``(top, bottom, left, right)``, default the whole
    image) of the grey PNG ``grey`` (0-255), where ``line`` marks the pixels of tile lines.
    Raises ``ValueError`` unless the lines read back as lines."""
    top, bottom, left, right = box or (0, grey.shape[0], 0, grey.shape[1])
    part = line(grey[top:bottom, left:right])
    # Roughly where the grid is (titles and labels dilute its columns), then its lines: screen
    # rows and columns that are line from one edge of the grid to the other.
    rough = runs(part.mean(0) > 0.5)
    rows = runs(part[:, rough[0][0]:rough[-1][1] + 1].mean(1) > 0.97)
    cols = runs(part[rows[0][0]:rows[-1][1] + 1].mean(0) > 0.97)
    rows = runs(part[:, cols[0][0]:cols[-1][1] + 1].mean(1) > 0.97)
    crop = grey[top:bottom, left:right]
    inside = part[rows[0][0]:rows[-1][1] + 1, cols[0][0]:cols[-1][1] + 1]
    col_line = np.zeros(part.shape[1], dtype=bool)
    col_line[cols[0][0]:cols[-1][1] + 1] = inside.mean(0) > 0.97
    row_line = np.zeros(part.shape[0], dtype=bool)
    row_line[rows[0][0]:rows[-1][1] + 1] = inside.mean(1) > 0.97
    box = crop[rows[0][0]:rows[-1][1] + 1, cols[0][0]:cols[-1][1] + 1]
    col_same = np.zeros(part.shape[1] - 1, dtype=bool)
    col_same[cols[0][0]:cols[-1][1]] = (np.abs(np.diff(box, axis=1)) < 1).all(0)
    row_same = np.zeros(part.shape[0] - 1, dtype=bool)
    row_same[rows[0][0]:rows[-1][1]] = (np.abs(np.diff(box, axis=0)) < 1).all(1)
    xs, col_shows = screen_of(col_line, col_same, grid, grid.nx, f"{what}, columns")
    ys, row_shows = screen_of(row_line, row_same, grid, grid.ny, f"{what}, rows")
    pixels = crop[np.ix_(ys, xs)]
    if not line(grid.lines_of(pixels)).mean() > 0.98:
        raise ValueError(f"{what}: the lines between tiles do not read back as lines")
    MATCHED.append(check_blocks(crop, pixels, row_shows, col_shows, what))
    return grid.tiles(pixels)


def black(grey):  # tile lines of a gray_r grid (value 1)
    return grey < 40


def mid_grey(grey):  # tile lines of the denoising mosaic (value 0.5 in gray)
    return (grey > 100) & (grey < 155)


def png_grey(path: Path) -> np.ndarray:
    """The grey levels (0-255) of ``path`` as committed at ``SOURCE``, before the redraw."""
    import io
    import subprocess

    from PIL import Image

    blob = subprocess.run(["git", "show", f"{SOURCE}:{path.relative_to(REPO).as_posix()}"],
                          cwd=REPO, capture_output=True, check=True).stdout
    with Image.open(io.BytesIO(blob)) as image:
        rgb = np.asarray(image.convert("RGB")).astype(np.int16)
    if np.ptp(rgb, axis=-1).max() > 8:
        raise ValueError(f"{path}: expected a grey figure")
    return rgb.mean(-1)


def axes_bands(grey: np.ndarray, count: int, what: str) -> list[tuple[int, int]]:
    """The ``count`` horizontal bands of a figure of stacked grids (one axes per row of
    images): between each pair of screen rows that are mostly line."""
    edges = runs(black(grey).mean(1) > 0.4)
    if len(edges) != 2 * count:
        raise ValueError(f"{what}: found {len(edges)} band edges, expected {2 * count}")
    return [(edges[2 * i][0], edges[2 * i + 1][1] + 1) for i in range(count)]


def ink(grey_tiles: np.ndarray) -> np.ndarray:
    """Image values from gray_r screen grey: 1 is black."""
    return (1.0 - grey_tiles / 255.0).astype(np.float32)


def json_of(path: Path) -> dict:
    return json.loads(path.read_text())


def option(command: str, name: str, default: list[str]) -> list[str]:
    """The values after ``name`` in a recorded command line."""
    words = shlex.split(command)
    if name not in words:
        return default
    at = words.index(name) + 1
    values = []
    while at < len(words) and not words[at].startswith("--"):
        values.append(words[at])
        at += 1
    return values


def stacked_rows(path: Path, count: int, per_row: int) -> list[np.ndarray]:
    """The rows of a figure drawn by the old ``save_image_rows`` (one axes per row)."""
    grey = png_grey(path)
    return [ink(read_grid(grey, Grid(1, per_row), black, f"{path.name} row {i}", (a, b, 0,
                                                                                 grey.shape[1])))
            for i, (a, b) in enumerate(axes_bands(grey, count, path.name))]


def visualise(folder: Path, write: bool) -> list[Path]:
    """``experiments.vae.visualise``'s three figures: the first test image of each class
    (classes 0-9), interpolations between classes (0, 1), (2, 3), ..., and attribute
    directions from the first five (the script's picks)."""
    from experiments.vae import visualise as script

    metrics = json_of(folder / "metrics.json")
    scales = metrics["attribute_scales"]
    class_pair = tuple(int(c) for c in option(metrics["command"], "--classes", ["1", "7"]))
    shape = (SIDE, SIDE)
    recon = stacked_rows(folder / "reconstructions.png", 2, 10)
    between = stacked_rows(folder / "interpolations.png", 5, 10)
    along = stacked_rows(folder / "attribute_directions.png", 10, len(scales))
    if write:
        script.save_reconstructions(folder / "reconstructions.png", recon[0], recon[1],
                                    list(range(10)), shape)
        script.save_interpolations(folder / "interpolations.png", between,
                                   [(a, a + 1) for a in range(0, 10, 2)], shape)
        script.save_attribute_directions(folder / "attribute_directions.png", along,
                                         list(range(5)), class_pair, scales, shape)
    return [folder / n for n in ("reconstructions.png", "interpolations.png",
                                 "attribute_directions.png")]


def latent_sizes(folder: Path, write: bool) -> list[Path]:
    """``experiments.vae.latent_sizes``' samples: one 10 x 10 panel per latent size."""
    from experiments.vae import latent_sizes as script

    metrics = json_of(folder / "metrics.json")
    sizes = [run["latent_dim"] for run in metrics["runs"]]
    path = folder / "samples_by_latent_size.png"
    grey = png_grey(path)
    # The panels are side by side: split the columns of line pixels into one group per panel.
    columns = runs(black(grey).mean(0) > 0.5)
    per = len(columns) // len(sizes)
    panels = []
    for i in range(len(sizes)):
        left, right = columns[i * per][0], columns[(i + 1) * per - 1][1] + 1
        panels.append(ink(read_grid(grey, Grid(10, 10), black, f"{path.name} panel {i}",
                                    (0, grey.shape[0], left, right))))
    if write:
        script.save_samples(path, panels, metrics["dataset"], sizes, (SIDE, SIDE))
    return [path]


def latent2d(folder: Path, write: bool) -> list[Path]:
    """``experiments.vae.latent2d``'s manifold: 20 x 20 decoder means."""
    from experiments.vae import latent2d as script

    metrics = json_of(folder / "metrics.json")
    n = int(option(metrics["command"], "--grid", ["20"])[0])
    path = folder / "manifold.png"
    images = ink(read_grid(png_grey(path), Grid(n, n), black, path.name))
    if write:
        script.save_manifold(path, images, metrics["dataset"], (SIDE, SIDE), n)
    return [path]


def denoise(folder: Path, write: bool) -> list[Path]:
    """``experiments.uses.denoise``'s figure: the clean images, then per flip rate e the
    noisy image, the median filter and the posterior mean (white on black, a one-pixel grey
    line after each tile)."""
    import torch

    from experiments.uses import denoise as script

    flip_probs = list(json_of(folder / "denoise.json")["flip_probs"])
    kinds = ["noisy", "median", "posterior mean"]
    path = folder / "denoising.png"
    ny = 1 + len(kinds) * len(flip_probs)
    grey = png_grey(path)
    tiles = read_grid(grey, Grid(ny, 8, padding=1, tail=True), mid_grey, path.name)
    strips = torch.from_numpy((tiles / 255.0).astype(np.float32)).view(ny, 8, -1)
    rows = {float(e): {kind: strips[1 + i * len(kinds) + j] for j, kind in enumerate(kinds)}
            for i, e in enumerate(flip_probs)}
    if write:
        script.save_figure(path, strips[0], rows, (SIDE, SIDE))
    return [path]


FIGURES = {
    "results/vae/visualise_mnist_mlp": visualise,
    "results/vae/visualise_mnist_conv": visualise,
    "results/vae/visualise_fashion_mlp": visualise,
    "results/vae/latent_sizes": latent_sizes,
    "results/vae/latent2d": latent2d,
    "results/vae/latent2d_fashion": latent2d,
    "results/uses/denoise": denoise,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="read the figures, write nothing")
    parser.add_argument("folders", nargs="*", default=list(FIGURES),
                        help="default: every folder this script knows")
    args = parser.parse_args(argv)
    for folder in args.folders:
        for path in FIGURES[folder](REPO / folder, write=not args.check):
            print(("read " if args.check else "redrew ") + str(path.relative_to(REPO)))
    print(f"{len(MATCHED)} grids read; screen pixels matching what was read: "
          f"{min(MATCHED):.2%} in the worst grid, {np.mean(MATCHED):.2%} on average")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
