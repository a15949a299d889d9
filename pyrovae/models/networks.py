"""Encoder and decoder builders: MLPs and a convolutional pair for 28x28 images.

Every builder returns a `pyro.nn.PyroModule` (converted in place with
``pyro.nn.module.to_pyro_module_``), so that inside a pyrovae model its weights go through Pyro's
param store and ``JitTrace_ELBO`` sees them as parameters rather than constants. Outside Pyro
they behave exactly like the ``torch.nn`` modules they were built from.

All networks accept any number of leading batch dimensions (``[..., D]``): with vectorised
particles a decoder sees ``z`` of shape ``[P, M, K]``.

Example::

    from pyrovae.models.networks import GaussianEncoder, build_decoder, mlp

    body = mlp([784, 512, 256], activation="relu", activate_last=True)
    encoder = GaussianEncoder(body, features=256, latent_dim=16)    # x -> (loc, scale)
    decoder = build_decoder("mlp", latent_dim=16, data_dim=784, hidden_sizes=[256, 512])
    loc, scale = encoder(x)                                          # x: [..., 784]
    logits = decoder(loc)                                            # [..., 784]

The same networks, and the modules a user passes to [`VAE`][models.VAE] or
[`M2`][models.M2] instead of them, follow these shapes (B rows, K latent dimensions,
C classes, D pixels, H output heads per pixel):

* Gaussian encoder: ``x [..., D] -> (loc [..., K], scale [..., K])``, ``scale > 0``.
* Labelled encoder (M2): ``(x [B, D], y) -> (loc, scale)`` with ``y`` integer labels whose
  shape broadcasts against ``[B]`` (``[B]``, or ``[C, 1]`` when the labels are enumerated; then
  the outputs are ``[C, B, K]``).
* Decoder: ``[..., K] -> [..., H * D]`` raw outputs (logits, or a mean and a raw log-variance
  head); M2's decoder takes ``[..., K + C]``: ``z`` and the one-hot label, concatenated.
* Classifier (M2): ``x [..., D] -> logits [..., C]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from pyro.nn.module import to_pyro_module_
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
}
ARCHITECTURES = ("mlp", "conv")


def as_pyro(module: nn.Module) -> PyroModule:
    """Convert ``module`` (and its children) to a ``PyroModule`` in place and return it."""
    if not isinstance(module, PyroModule):
        to_pyro_module_(module)
    return module


def activation_layer(name: str) -> nn.Module:
    """A fresh activation module by name: one of ``ACTIVATIONS``."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(
    sizes: Sequence[int], activation: str = "relu", activate_last: bool = False
) -> PyroModule:
    """A multilayer perceptron ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    Args:
        sizes: layer widths, at least two (input and output), all positive.
        activation: name of the nonlinearity between layers (default ``"relu"``).
        activate_last: also apply it after the last layer (default False: a linear output,
            as needed for logits or for a body that feeds an output head).

    Returns:
        A ``PyroModule[nn.Sequential]`` mapping ``[..., sizes[0]]`` to ``[..., sizes[-1]]``.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s <= 0 for s in sizes):
        raise ValueError(f"sizes must be >= 2 positive widths, got {sizes}")
    activation_layer(activation)  # validate the name early
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or activate_last:
            layers.append(activation_layer(activation))
    return as_pyro(nn.Sequential(*layers))


class _FlattenBatch(nn.Module):
    """Apply ``net`` to ``[..., D]`` inputs by folding the leading dimensions into one."""

    def __init__(self, net: nn.Module, in_features: int) -> None:
        super().__init__()
        self.net, self.in_features = net, in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        out = self.net(x.reshape(-1, self.in_features))
        return out.reshape(*lead, out.shape[-1])


def conv_encoder_body(
    features: int = 256, channels: Sequence[int] = (32, 64), activation: str = "relu"
) -> PyroModule:
    """Convolutional feature extractor for flattened 28x28 single-channel images.

    ``[..., 784] -> [1, 28, 28] -> conv 4x4 stride 2 (-> 14x14) -> conv 4x4 stride 2 (-> 7x7)
    -> linear -> [..., features]``, with ``activation`` after every layer.

    Args:
        features: output width (default 256).
        channels: the two convolutions' channel counts (default ``(32, 64)``).
        activation: nonlinearity name (default ``"relu"``).
    """
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


def conv_decoder(
    latent_dim: int,
    out_channels: int = 1,
    features: int = 256,
    channels: Sequence[int] = (64, 32),
    activation: str = "relu",
) -> PyroModule:
    """Transposed-convolution decoder to 28x28 images: ``[..., K] -> [..., out_channels * 784]``.

    ``linear -> linear -> [c1, 7, 7] -> deconv 4x4 stride 2 (-> 14x14) -> deconv 4x4 stride 2
    (-> [out_channels, 28, 28])``, flattened channel-major (channel c is
    ``[..., c*784:(c+1)*784]``).
    The output is linear (logits, means or log-variances: the likelihood decides).

    Args:
        latent_dim: K.
        out_channels: output maps per pixel (default 1; 2 for a mean and a log-variance).
        features: width of the first linear layer (default 256).
        channels: the two transposed convolutions' input channels (default ``(64, 32)``).
        activation: nonlinearity name (default ``"relu"``).
    """
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


class GaussianEncoder(PyroModule):
    """``x -> (loc, scale)`` of a diagonal Gaussian: a body and two linear heads.

    ``scale = softplus(raw) + min_scale`` keeps the scale positive and away from 0.

    Args:
        body: network ``[..., D] -> [..., features]`` (e.g. [`mlp`][] with
            ``activate_last=True``, or [`conv_encoder_body`][]).
        features: the body's output width.
        latent_dim: K.
        min_scale: lower bound on the scale (default 1e-4).
    """

    def __init__(
        self, body: nn.Module, features: int, latent_dim: int, min_scale: float = 1e-4
    ) -> None:
        super().__init__()
        self.body = as_pyro(body)
        self.loc = as_pyro(nn.Linear(features, latent_dim))
        self.raw_scale = as_pyro(nn.Linear(features, latent_dim))
        self.min_scale = min_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.loc(h), F.softplus(self.raw_scale(h)) + self.min_scale


def build_encoder(
    arch: str,
    data_dim: int,
    latent_dim: int,
    hidden_sizes: Sequence[int] = (400,),
    activation: str = "relu",
) -> GaussianEncoder:
    """A Gaussian encoder ``[..., D] -> (loc [..., K], scale [..., K])``.

    Args:
        arch: ``"mlp"`` (``D -> hidden_sizes... -> heads``) or ``"conv"`` (28x28 images,
            [`conv_encoder_body`][] with ``features = hidden_sizes[-1]``).
        data_dim: D (784 for ``"conv"``).
        latent_dim: K.
        hidden_sizes: hidden widths (default ``(400,)``).
        activation: nonlinearity name (default ``"relu"``).
    """
    hidden_sizes = _check_arch(arch, data_dim, hidden_sizes)
    body = build_body(arch, data_dim, hidden_sizes, activation)
    return GaussianEncoder(body, hidden_sizes[-1], latent_dim)


def build_body(
    arch: str, data_dim: int, hidden_sizes: Sequence[int] = (400,), activation: str = "relu"
) -> PyroModule:
    """A feature extractor ``[..., D] -> [..., hidden_sizes[-1]]``, activated at its output.

    ``"mlp"``: ``D -> hidden_sizes...``; ``"conv"``: [`conv_encoder_body`][] with
    ``features = hidden_sizes[-1]`` (28x28 images). The body of every encoder and classifier.
    """
    hidden_sizes = _check_arch(arch, data_dim, hidden_sizes)
    if arch == "mlp":
        return mlp([data_dim, *hidden_sizes], activation, activate_last=True)
    return conv_encoder_body(hidden_sizes[-1], activation=activation)


class Classifier(PyroModule):
    """``x [..., D] -> logits [..., C]``: a body ([`build_body`][]) and a linear head."""

    def __init__(
        self, arch: str, data_dim: int, num_classes: int, hidden_sizes: Sequence[int],
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.body = build_body(arch, data_dim, hidden_sizes, activation)
        self.head = as_pyro(nn.Linear(int(hidden_sizes[-1]), num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class LabelledGaussianEncoder(PyroModule):
    """``(x [B, D], y) -> (loc, scale)`` of a diagonal Gaussian ``q(z | x, y)``.

    ``x`` goes through a body ([`build_body`][]) once; the label enters through a learned
    embedding added to a joint hidden layer (the same as a linear layer on
    ``[features, one_hot(y)]``), so with ``y`` enumerated as ``[C, 1]`` the output is
    ``[C, B, K]`` without copying ``x`` C times. ``scale = softplus(raw) + min_scale``.
    """

    def __init__(
        self, arch: str, data_dim: int, num_classes: int, latent_dim: int,
        hidden_sizes: Sequence[int], activation: str = "relu", min_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        width = int(hidden_sizes[-1])
        self.body = build_body(arch, data_dim, hidden_sizes, activation)
        self.joint = as_pyro(nn.Linear(width, width))
        self.label = as_pyro(nn.Embedding(num_classes, width))
        self.act = as_pyro(activation_layer(activation))
        self.loc = as_pyro(nn.Linear(width, latent_dim))
        self.raw_scale = as_pyro(nn.Linear(width, latent_dim))
        self.min_scale = min_scale

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.act(self.joint(self.body(x)) + self.label(y))
        return self.loc(h), F.softplus(self.raw_scale(h)) + self.min_scale


def build_decoder(
    arch: str,
    latent_dim: int,
    data_dim: int,
    hidden_sizes: Sequence[int] = (400,),
    activation: str = "relu",
    num_heads: int = 1,
) -> PyroModule:
    """A decoder ``[..., K] -> [..., num_heads * D]`` with a linear output.

    Args:
        arch: ``"mlp"`` (``K -> hidden_sizes... -> num_heads * D``) or ``"conv"``
            ([`conv_decoder`][] with ``out_channels = num_heads``).
        latent_dim: K.
        data_dim: D (784 for ``"conv"``).
        hidden_sizes: hidden widths, from the latent side (default ``(400,)``).
        activation: nonlinearity name (default ``"relu"``).
        num_heads: output values per pixel (1, or 2 for a mean and a log-variance).
    """
    hidden_sizes = _check_arch(arch, data_dim, hidden_sizes)
    if arch == "mlp":
        return mlp([latent_dim, *hidden_sizes, num_heads * data_dim], activation)
    return conv_decoder(latent_dim, num_heads, hidden_sizes[0], activation=activation)


def _check_arch(arch: str, data_dim: int, hidden_sizes: Sequence[int]) -> list[int]:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHITECTURES}")
    if arch == "conv" and data_dim != 28 * 28:
        raise ValueError(f"arch='conv' is for 28x28 images (data_dim=784), got {data_dim}")
    sizes = [int(s) for s in hidden_sizes]
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"hidden_sizes must be a non-empty list of positive ints, got {sizes}")
    return sizes
