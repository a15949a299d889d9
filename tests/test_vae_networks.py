"""Encoder/decoder builders: batch dimensions, output heads, Pyro registration."""

import pytest
import torch
from pyro.nn import PyroModule

from pyrovae.models.networks import build_decoder, build_encoder, mlp


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
