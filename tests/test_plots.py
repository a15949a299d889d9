"""Image grids a person can read (issue 25): `pyrovae.plots` upscales nearest-neighbour and
labels, and the ``pyrovae`` commands that write grids use it."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pyrovae.plots import image_grid, image_grid_figure, save_image_grid


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.texts] + [t.get_text() for ax in fig.axes for t in ax.texts]


def png(path, mode="L") -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert(mode))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_grid_is_upscaled_and_labelled(tmp_path):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6, 28 * 28, generator=gen)
    path = save_image_grid(tmp_path / "g.png", images, (28, 28), nrow=3, title="samples",
                           row_labels=["y = 0", "y = 1"], col_labels=["a", "b", "c"], scale=4)
    grid = image_grid(images, (28, 28), nrow=3)  # 2 x 3 tiles with 2-pixel lines
    pixels = png(path)
    height, width = pixels.shape
    assert width >= 4 * grid.shape[1] and height >= 4 * grid.shape[0]
    fig = image_grid_figure(images, (28, 28), nrow=3, title="samples",
                            row_labels=["y = 0", "y = 1"], col_labels=["a", "b", "c"])
    assert {"samples", "y = 0", "y = 1", "a", "b", "c"} <= set(texts(fig))


def test_pixels_are_square_blocks(tmp_path):
    """Nearest-neighbour upscaling: a 2 x 2 checkerboard at scale 10 is two black 10 x 10
    squares (black on white: 1 is black), with no grey in between."""
    board = np.array([[1.0, 0.0, 0.0, 1.0]])
    pixels = png(save_image_grid(tmp_path / "b.png", board, (2, 2), scale=10))
    ys, xs = np.nonzero(pixels == 0)
    assert len(ys) == 2 * 10 * 10
    assert xs.max() - xs.min() == ys.max() - ys.min() == 2 * 10 - 1


def test_default_scale_reads_small_images_large():
    """At least 3 screen pixels per image pixel, more for small images (8 x 8 digits at 12)."""
    for side, scale in [(8, 12), (28, 4), (64, 3)]:
        fig = image_grid_figure(np.zeros((1, side * side)), (side, side), nrow=1)
        width = fig.axes[0].get_position().width * fig.get_figwidth() * fig.dpi
        assert width == pytest.approx(scale * (side + 4), abs=0.5)


def test_labels_must_match_the_grid():
    with pytest.raises(ValueError, match="need 2 labels for 2 rows"):
        image_grid_figure(np.zeros((4, 4)), (2, 2), nrow=2, row_labels=["one"])


def test_colour_grid(tmp_path):
    red = np.zeros((1, 3, 2, 2), dtype=np.float32)
    red[:, 0] = 1.0
    path = save_image_grid(tmp_path / "c.png", red.reshape(1, -1), (3, 2, 2), scale=10)
    pixels = png(path, "RGB")
    assert (pixels == [255, 0, 0]).all(-1).sum() == 20 * 20  # the 2 x 2 image, 10x each way


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    from pyrovae.cli import main

    out = tmp_path_factory.mktemp("vae")
    assert main(["-q", "vae", "train", "--dataset", "digits", "--latent-dim", "2",
                 "--hidden-sizes", "16", "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_cli_figures_are_upscaled_and_labelled(vae_run, tmp_path, monkeypatch):
    """``vae sample`` and ``impute`` write grids at >= 3x with a title and headers; the
    captured figures' texts hold the labels (8 x 8 digits)."""
    from pyrovae import plots
    from pyrovae.cli import main

    seen = []
    draw = plots.image_grid_figure

    def record(*args, **kwargs):
        fig = draw(*args, **kwargs)
        seen.append(texts(fig))
        return fig

    monkeypatch.setattr(plots, "image_grid_figure", record)
    samples = tmp_path / "samples.png"
    assert main(["-q", "vae", "sample", "--checkpoint", str(vae_run / "last.pt"), "--num", "16",
                 "--columns", "4", "--out", str(samples)]) == 0
    height, width = png(samples).shape
    assert width >= 3 * (4 * 10 + 2) and height >= 3 * (4 * 10 + 2)
    assert any(t.startswith("VAE samples") for t in seen[-1])

    out = tmp_path / "impute"
    assert main(["-q", "impute", "--checkpoint", str(vae_run / "last.pt"), "--num-images", "7",
                 "--num-samples", "5", "--out", str(out)]) == 0
    labels = seen[-1]
    assert labels.count("observed") == labels.count("imputed") == labels.count("truth") == 5
    assert "1-5" in labels and "6-7" in labels  # every requested image is shown
    assert any("test images 1-7" in t for t in labels)
    report = json.loads((out / "report.json").read_text())
    assert report["grid"] == "imputation.png" and (out / "imputation.png").exists()


def test_m2_sample_labels_every_class(tmp_path, monkeypatch):
    from pyrovae import plots
    from pyrovae.cli import main

    run = tmp_path / "m2"
    assert main(["-q", "m2", "train", "--dataset", "digits", "--latent-dim", "2",
                 "--hidden-sizes", "16", "--epochs", "1", "--out", str(run)]) == 0
    seen = []
    draw = plots.image_grid_figure
    monkeypatch.setattr(plots, "image_grid_figure",
                        lambda *a, **k: seen.append(k) or draw(*a, **k))
    assert main(["-q", "m2", "sample", "--checkpoint", str(run / "last.pt"), "--per-class", "3",
                 "--out", str(tmp_path / "m2.png")]) == 0
    assert seen[-1]["row_labels"] == [f"y = {c}" for c in range(10)]
    assert seen[-1]["title"].startswith("M2 samples")
