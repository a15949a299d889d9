"""The conv VAE and M2 on colour images: 3x32x32, flattened channel-major as the loaders give."""

import pytest
import torch

from pyrovae import fit
from pyrovae.models.m2 import M2
from pyrovae.models.vae import VAE

SHAPE = (3, 32, 32)
D = 3 * 32 * 32


def colour_images(n: int, seed: int = 0) -> torch.Tensor:
    """Reddish images: red about 0.9, green 0.5, blue 0.1 (plus noise), flattened [n, D]."""
    generator = torch.Generator().manual_seed(seed)
    level = torch.tensor([0.9, 0.5, 0.1])[None, :, None, None]
    noise = 0.05 * torch.randn(n, *SHAPE, generator=generator)
    return (level + noise).clamp(0, 1).reshape(n, D)


def channel_means(images: torch.Tensor) -> list[float]:
    return images.reshape(-1, *SHAPE).mean((0, 2, 3)).tolist()


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "gaussian_learned"])
def test_conv_vae_learns_colour_images(likelihood):
    torch.manual_seed(0)
    x = colour_images(48)
    vae = VAE(data_dim=D, image_shape=SHAPE, latent_dim=2, hidden_sizes=[16], arch="conv",
              likelihood=likelihood, allow_continuous=True)
    assert vae.config["image_shape"] == [3, 32, 32]
    history = fit(vae, x, lr=1e-2, epochs=4, batch_size=16, seed=0)
    losses = [row["loss"] for row in history.epochs]
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0]
    if likelihood == "gaussian_learned":
        return  # its means move slowly while the variances settle (hundreds of steps here)
    # The decoder keeps the channels apart: its reconstructions are red, not blue. At
    # initialisation every channel's mean is near sigmoid(0) = 0.5, so this fails if the
    # channels are mixed up.
    red, green, blue = channel_means(vae.reconstruct(x))
    assert red > 0.7 and blue < 0.3, (red, green, blue)


def test_conv_m2_learns_colour_images():
    torch.manual_seed(0)
    x = colour_images(40)
    y = torch.arange(40) % 4
    m2 = M2(data_dim=D, image_shape=SHAPE, num_classes=4, latent_dim=2, hidden_sizes=[16],
            arch="conv", classifier_arch="conv", alpha=1.0, allow_continuous=True)
    assert m2.config["image_shape"] == [3, 32, 32]
    history = fit(m2, {"unlabelled": x[20:], "labelled": (x[:20], y[:20])}, lr=1e-2, epochs=4,
                  batch_size={"unlabelled": 10, "labelled": 10}, objective="enum", seed=0)
    losses = [row["loss"] for row in history.epochs]
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0]
    red, green, blue = channel_means(m2.sample(torch.arange(4)))
    assert red > 0.7 and blue < 0.3, (red, green, blue)
    assert m2.class_logits(x).shape == (40, 4)


def test_colour_image_shape_must_match_data_dim():
    with pytest.raises(ValueError, match=r"data_dim=784 must be the product of image_shape"):
        M2(image_shape=SHAPE, arch="conv", alpha=1.0)
    with pytest.raises(ValueError, match=r"data_dim=784 must be the product of image_shape"):
        VAE(image_shape=SHAPE)  # also for an MLP: the shape describes the data
