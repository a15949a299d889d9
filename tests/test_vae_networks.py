"""Encoder/decoder builders: batch dimensions, output heads, Pyro registration."""

import hashlib
import math

import pytest
import torch
from pyro.nn import PyroModule
from torch import nn

from pyrovae.models.m2 import M2
from pyrovae.models.networks import (
    GaussianEncoder,
    _FlattenBatch,
    activation_layer,
    as_pyro,
    build_decoder,
    build_encoder,
    conv_decoder,
    conv_layout,
    mlp,
)
from pyrovae.models.vae import VAE


def test_mlp_layers_and_activation():
    net = mlp([5, 7, 3], activation="tanh")
    layers = list(net)
    kinds = [torch.nn.Linear, torch.nn.Tanh, torch.nn.Linear]
    assert len(layers) == 3 and all(isinstance(m, k) for m, k in zip(layers, kinds, strict=True))
    assert isinstance(net, PyroModule) and all(isinstance(m, PyroModule) for m in layers)
    assert isinstance(list(mlp([5, 3], activate_last=True))[-1], torch.nn.ReLU)
    with pytest.raises(ValueError, match="sizes"):
        mlp([5])
    with pytest.raises(ValueError, match="activation"):
        mlp([5, 3], activation="sine")


@pytest.mark.parametrize("arch, data_dim", [("mlp", 12), ("conv", 784)])
@pytest.mark.parametrize("heads", [1, 2])
def test_encoder_and_decoder_keep_leading_batch_dims(arch, data_dim, heads):
    encoder = build_encoder(arch, data_dim, latent_dim=3, hidden_sizes=[16])
    decoder = build_decoder(arch, latent_dim=3, data_dim=data_dim, hidden_sizes=[16],
                            num_heads=heads)
    x = torch.rand(4, 5, data_dim)
    loc, scale = encoder(x)
    assert loc.shape == scale.shape == (4, 5, 3) and bool((scale > 0).all())
    # Folding the leading dims must not mix rows: each row equals its own single-row output.
    assert torch.allclose(encoder(x[1, 2][None])[0][0], loc[1, 2], atol=1e-6)
    out = decoder(torch.randn(2, 4, 3))
    assert out.shape == (2, 4, heads * data_dim)


# ------------------------------------------------------------------ conv networks, any image shape
@pytest.mark.parametrize("image_shape, convs, last_map", [
    ((1, 28, 28), 2, 7), ((3, 32, 32), 2, 8), ((3, 64, 64), 3, 8),
])
@pytest.mark.parametrize("heads", [1, 2])
def test_conv_networks_take_grey_and_colour_images(image_shape, convs, last_map, heads):
    data_dim = math.prod(image_shape)
    encoder = build_encoder("conv", data_dim, latent_dim=3, hidden_sizes=[16],
                            image_shape=image_shape)
    decoder = build_decoder("conv", latent_dim=3, data_dim=data_dim, hidden_sizes=[16],
                            num_heads=heads, image_shape=image_shape)
    body = list(encoder.body.net)
    conv_layers = [m for m in body if isinstance(m, torch.nn.Conv2d)]
    assert len(conv_layers) == convs and conv_layers[0].in_channels == image_shape[0]
    assert body[-2].in_features == conv_layers[-1].out_channels * last_map**2
    deconvs = [m for m in decoder.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(deconvs) == convs and deconvs[-1].out_channels == heads * image_shape[0]
    x = torch.rand(2, 3, data_dim)
    loc, scale = encoder(x)
    assert loc.shape == scale.shape == (2, 3, 3)
    assert decoder(loc).shape == (2, 3, heads * data_dim)


def test_conv_decoder_lays_out_heads_and_channels_as_the_data():
    """Output map ``head * C + c`` is head ``head`` of channel ``c``: the flattened output is
    the heads one after the other, each channel-major like the images."""
    decoder = conv_decoder(2, out_channels=2, features=8, image_shape=(3, 32, 32))
    z = torch.randn(4, 2)
    net = decoder.net
    maps = net[:-1](z)  # [4, 6, 32, 32] before flattening
    out = decoder(z).reshape(4, 2, 3, 32, 32)
    assert maps.shape == (4, 6, 32, 32)
    assert torch.equal(out[:, 1, 2], maps[:, 1 * 3 + 2]) and torch.equal(out[:, 0, 1], maps[:, 1])


@pytest.mark.parametrize("image_shape, data_dim, match", [
    ((1, 8, 8), 64, r"cannot take images of shape \(1, 8, 8\)"),  # 8 -> 4 -> 2: too small
    ((1, 30, 30), 900, r"cannot take images of shape \(1, 30, 30\)"),  # 15 is odd
    ((3, 100, 100), 30000, "cannot take"),  # 100 -> 50 -> 25, odd, still above 8
    ((28, 28), 784, r"\(channels, height, width\)"),
    ((3, 32, 32), 784, r"data_dim=784 must be the product of image_shape \(3, 32, 32\)"),
])
def test_conv_networks_refuse_shapes_they_cannot_take(image_shape, data_dim, match):
    with pytest.raises(ValueError, match=match):
        build_encoder("conv", data_dim, latent_dim=3, image_shape=image_shape)
    with pytest.raises(ValueError, match=match):
        VAE(data_dim=data_dim, arch="conv", image_shape=image_shape)


def test_conv_without_image_shape_still_means_28x28():
    with pytest.raises(ValueError, match=r"28x28 images \(data_dim=784\) unless image_shape"):
        build_decoder("conv", latent_dim=3, data_dim=3072)
    # the rule: halve at least twice and until the longer side is at most 8
    assert conv_layout((1, 16, 16)) == ((1, 16, 16), 2, (4, 4))
    assert conv_layout((3, 16, 32)) == ((3, 16, 32), 2, (4, 8))
    assert conv_layout((3, 96, 96)) == ((3, 96, 96), 4, (6, 6))


# ----------------------------------------------------- (1, 28, 28): as before image_shape existed
def _old_conv_encoder_body(features=256, channels=(32, 64), activation="relu"):
    """The 28x28 body as it was written before ``image_shape`` (commit fd9462b), verbatim."""
    c1, c2 = (int(c) for c in channels)
    net = nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, c1, 4, stride=2, padding=1),
        activation_layer(activation),
        nn.Conv2d(c1, c2, 4, stride=2, padding=1),
        activation_layer(activation),
        nn.Flatten(1),
        nn.Linear(c2 * 7 * 7, features),
        activation_layer(activation),
    )
    return as_pyro(_FlattenBatch(net, 28 * 28))


def _old_conv_decoder(latent_dim, out_channels=1, features=256, channels=(64, 32),
                      activation="relu"):
    """The 28x28 decoder as it was written before ``image_shape`` (commit fd9462b), verbatim."""
    c1, c2 = (int(c) for c in channels)
    net = nn.Sequential(
        nn.Linear(latent_dim, features),
        activation_layer(activation),
        nn.Linear(features, c1 * 7 * 7),
        activation_layer(activation),
        nn.Unflatten(1, (c1, 7, 7)),
        nn.ConvTranspose2d(c1, c2, 4, stride=2, padding=1),
        activation_layer(activation),
        nn.ConvTranspose2d(c2, out_channels, 4, stride=2, padding=1),
        nn.Flatten(1),
    )
    return as_pyro(_FlattenBatch(net, latent_dim))


def _state_sha256(module) -> str:
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("likelihood, heads", [("bernoulli", 1), ("gaussian_learned", 2)])
def test_default_conv_vae_is_bit_identical_to_the_old_code(likelihood, heads):
    torch.manual_seed(0)
    vae = VAE(latent_dim=5, hidden_sizes=[32], arch="conv", likelihood=likelihood)
    torch.manual_seed(0)  # the VAE builds the encoder (body, then heads), then the decoder
    body = _old_conv_encoder_body(32)
    old_encoder = GaussianEncoder(body, 32, 5)
    old_decoder = _old_conv_decoder(5, heads, 32)
    assert vae.encoder.state_dict().keys() == old_encoder.state_dict().keys()
    for new, old in [(vae.encoder, old_encoder), (vae.decoder, old_decoder)]:
        for (name, a), b in zip(new.state_dict().items(), old.state_dict().values(),
                                strict=True):
            assert torch.equal(a, b), name
    x = torch.rand(3, 784, generator=torch.Generator().manual_seed(1))
    loc, scale = vae.encoder(x)
    old_loc, old_scale = old_encoder(x)
    assert torch.equal(loc, old_loc) and torch.equal(scale, old_scale)
    assert torch.equal(vae.decoder(loc), old_decoder(loc))


# sha256 of the seeded weights (names and bytes, sorted by name) of conv models built by the
# code at commit fd9462b, before image_shape: VAE(latent_dim=5, hidden_sizes=[32], arch="conv",
# likelihood=...) and M2(latent_dim=5, hidden_sizes=[32], arch="conv", alpha=1.0), each after
# torch.manual_seed(0). Weights only: conv outputs differ in the last bits between CPUs.
OLD_WEIGHTS_SHA256 = {
    "vae-bernoulli": "84453a469835ba14df8062704412a14dd91bf3adf8ff8d95524e7473a3f5913c",
    "vae-gaussian_learned": "8739989b2ff8f9d9e830db62f8bd959ea879b488c1e904339c63c4ae981fadf0",
    "m2": "923dc8b89bf2cbd3badb0ca53ba5d6f014b82813bfe24af25e06a575b8f67a2e",
}


def test_default_conv_models_draw_the_old_seeded_weights():
    got = {}
    for likelihood in ("bernoulli", "gaussian_learned"):
        torch.manual_seed(0)
        got[f"vae-{likelihood}"] = _state_sha256(
            VAE(latent_dim=5, hidden_sizes=[32], arch="conv", likelihood=likelihood))
    torch.manual_seed(0)
    got["m2"] = _state_sha256(M2(latent_dim=5, hidden_sizes=[32], arch="conv", alpha=1.0))
    assert got == OLD_WEIGHTS_SHA256
