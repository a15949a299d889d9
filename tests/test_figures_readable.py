"""Figures a person can read at 100 % zoom (issue 25): every PNG in ``results/`` is large
enough, the experiments' grid helpers upscale and title, and the script that redrew the
committed grids reads an old drawing's images back exactly."""

import importlib.util
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from pyrovae import plots

REPO = Path(__file__).resolve().parents[1]
MIN_SIDE = 300  # pixels, the shorter side of a committed figure

# Figures that may be shorter than MIN_SIDE, each with the reason. Nothing else may be.
SMALL_ON_PURPOSE = {
    # One row of ten stroke drawings, 1600 px wide: each drawing is about 150 px across,
    # drawn as lines (no image pixels to upscale).
    "results/sketch_rnn/aaron_sheep/interpolation.png": "a strip of line drawings",
    "results/sketch_rnn/aaron_sheep/pilot/interpolation.png": "a strip of line drawings",
    "results/sketch_rnn/kanji/interpolation.png": "a strip of line drawings",
    "results/sketch_rnn/aaron_sheep/cpu45/interpolation.png": "a strip of line drawings",
    "results/sketch_rnn/aaron_sheep/cpu45_dq/interpolation.png": "a strip of line drawings",
    "results/sketch_rnn/aaron_sheep/cpu100_d256/interpolation.png": "a strip of line drawings",
    "results/sketch_rnn/kanji/cpu35_d256/interpolation.png": "a strip of line drawings",
}


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header."""
    with open(path, "rb") as file:
        header = file.read(24)
    if header[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    return struct.unpack(">II", header[16:24])


def too_small(paths, root: Path) -> list[str]:
    """The paths (relative to ``root``) whose shorter side is under MIN_SIDE and that are not
    in SMALL_ON_PURPOSE."""
    found = []
    for path in paths:
        name = path.relative_to(root).as_posix()
        if min(png_size(path)) < MIN_SIDE and name not in SMALL_ON_PURPOSE:
            found.append(f"{name} {png_size(path)}")
    return found


def test_every_committed_figure_is_large_enough():
    paths = sorted((REPO / "results").rglob("*.png"))
    assert len(paths) > 50  # the results are there to check
    assert too_small(paths, REPO) == []
    missing = [name for name in SMALL_ON_PURPOSE if not (REPO / name).is_file()]
    assert missing == [], "the allow-list names figures that are gone"


def test_a_one_pixel_per_pixel_grid_is_caught(tmp_path):
    """What issue 25 found: 16 samples at one screen pixel per image pixel, a 37 x 37 PNG."""
    from PIL import Image

    grid = plots.image_grid(np.zeros((16, 64)), (8, 8), nrow=4, padding=1)
    (tmp_path / "results").mkdir()
    Image.fromarray((255 * grid).astype(np.uint8)).save(tmp_path / "results" / "samples.png")
    assert grid.shape == (37, 37)
    assert too_small([tmp_path / "results" / "samples.png"], tmp_path) == [
        "results/samples.png (37, 37)"]


@pytest.fixture
def drawn(monkeypatch):
    """The texts and pixel sizes of the grids the experiment helpers draw."""
    seen = []

    def recording(draw):
        def record(*args, **kwargs):
            fig = draw(*args, **kwargs)
            texts = [t.get_text() for t in fig.texts]
            texts += [t.get_text() for ax in fig.axes for t in ax.texts]
            box = fig.axes[0].get_position()
            seen.append({"texts": texts,
                         "grid_px": (box.width * fig.get_figwidth() * fig.dpi,
                                     box.height * fig.get_figheight() * fig.dpi)})
            return fig
        return record

    monkeypatch.setattr(plots, "image_grid_figure", recording(plots.image_grid_figure))
    monkeypatch.setattr(plots, "image_panels_figure", recording(plots.image_panels_figure))
    yield seen
    import matplotlib.pyplot as plt

    plt.close("all")


def test_experiment_grids_are_upscaled_and_titled(drawn, tmp_path):
    """Each helper's grid is drawn at >= 3 screen pixels per image pixel, with its title and
    labels; the saved PNG is at least that large."""
    from experiments import figures
    from pyrovae.plots import image_grid

    rng = np.random.default_rng(0)
    rows = [rng.random((5, 64)), rng.random((5, 64))]
    path = figures.save_image_rows(tmp_path / "rows.png", rows, ["data", "reconstruction"],
                                   (8, 8), title="rows", col_labels=list("abcde"))
    data_px = image_grid(np.concatenate(rows), (8, 8), nrow=5).shape
    width, height = drawn[-1]["grid_px"]
    assert width >= 3 * data_px[1] and height >= 3 * data_px[0]
    assert {"rows", "data", "reconstruction", "a", "e"} <= set(drawn[-1]["texts"])
    assert min(png_size(path)) >= 3 * data_px[0]

    panels = [rng.random((4, 64)), rng.random((4, 64)), rng.random((4, 64))]
    path = figures.save_grids_side_by_side(tmp_path / "panels.png", panels,
                                           ["2-D", "5-D", "10-D"], (8, 8), nrow=2)
    one = image_grid(panels[0], (8, 8), nrow=2).shape
    width, height = drawn[-1]["grid_px"]
    assert width >= 3 * 3 * one[1] and height >= 3 * one[0]
    assert {"2-D", "5-D", "10-D"} <= set(drawn[-1]["texts"])

    table = rng.random((2, 3, 64))
    figures.save_table_of_images(tmp_path / "table.png", table, (8, 8),
                                 column_titles=["x", "y=0", "y=1"], row_titles=["a", "b"],
                                 title="analogies")
    assert {"analogies", "x", "y=1", "a", "b"} <= set(drawn[-1]["texts"])
    assert drawn[-1]["grid_px"][0] >= 3 * image_grid(table.reshape(6, -1), (8, 8), 3).shape[1]

    with pytest.raises(ValueError, match="equal lengths"):
        figures.save_image_rows(tmp_path / "bad.png", [rows[0], rows[1][:3]], None, (8, 8))


def rerender_module():
    spec = importlib.util.spec_from_file_location(
        "rerender_grids", REPO / "scripts" / "rerender_grids.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["rerender_grids"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("inches", [2.3, 3.0, 4.1])
def test_rerender_reads_an_old_drawing_back(inches, tmp_path):
    """A grid drawn as the old helpers drew it (imshow, nearest, 1.1-2x per image pixel,
    black lines, under a title) reads back to its images within the colour map's 8-bit
    steps."""
    import matplotlib.pyplot as plt
    from PIL import Image

    rerender = rerender_module()
    images = np.random.default_rng(1).random((9, 28 * 28)).astype(np.float32)
    grid = plots.image_grid(images, (28, 28), nrow=3, padding=2, pad_value=1.0)
    fig, ax = plots.pyplot().subplots(figsize=(inches, inches))
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    ax.set_title("an old figure")
    fig.savefig(tmp_path / "old.png", dpi=120)
    plt.close(fig)
    with Image.open(tmp_path / "old.png") as png:
        grey = np.asarray(png.convert("L")).astype(float)
    read = rerender.ink(rerender.read_grid(grey, rerender.Grid(3, 3), rerender.black, "old"))
    assert np.abs(read - images).max() <= 2.5 / 255
    # Shuffled tiles would read back as well as lines do: the order must be right too.
    assert np.abs(read[1:] - images[:-1]).max() > 0.5
