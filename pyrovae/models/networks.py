"""Encoder and decoder builders: MLPs and a convolutional pair for images (grey or colour).

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
C classes, D values per image, H output heads per value). Images are flattened channel-major,
as [`pyrovae.data.load_dataset`][] gives them: for ``image_shape = (channels, height, width)``,
colour channel ``c`` is ``x[..., c*height*width:(c+1)*height*width]`` and
``D = channels*height*width``; [`conv_layout`][] states which shapes the conv networks take.

* Gaussian encoder: ``x [..., D] -> (loc [..., K], scale [..., K])``, ``scale > 0``.
* Labelled encoder (M2): ``(x [B, D], y) -> (loc, scale)`` with ``y`` integer labels whose
  shape broadcasts against ``[B]`` (``[B]``, or ``[C, 1]`` when the labels are enumerated; then
  the outputs are ``[C, B, K]``).
* Decoder: ``[..., K] -> [..., H * D]`` raw outputs (logits, or a mean and a raw log-variance
  head); M2's decoder takes ``[..., K + C]``: ``z`` and the one-hot label, concatenated.
* Classifier (M2): ``x [..., D] -> logits [..., C]``.
"""

from __future__ import annotations

import math
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


#: The image shape the conv networks assume when none is given: MNIST's.
DEFAULT_IMAGE_SHAPE = (1, 28, 28)
#: The conv networks halve each side until the longer one is at most this...
CONV_MAX_SIDE = 8
#: ...but never to fewer pixels than this.
CONV_MIN_SIDE = 4


def conv_layout(image_shape: Sequence[int]) -> tuple[tuple[int, int, int], int, tuple[int, int]]:
    """How the conv networks see images of ``image_shape``: ``((C, H, W), n, (h, w))``.

    The rule: every convolution (4x4, stride 2, padding 1) halves both sides exactly, and there
    are ``n`` of them, ``n`` the number of halvings until the longer side is at most
    ``CONV_MAX_SIDE`` (8), and at least 2; the last feature map ``h x w`` must keep at least
    ``CONV_MIN_SIDE`` (4) pixels a side. So ``(1, 28, 28)``: 28 -> 14 -> 7, ``n = 2``;
    ``(3, 32, 32)``: 32 -> 16 -> 8, ``n = 2``; ``(3, 64, 64)``: 64 -> 32 -> 16 -> 8, ``n = 3``.

    Raises:
        ValueError: ``image_shape`` is not three positive ints ``(C, H, W)``, or a side does not
            halve exactly down to the last feature map, or that map is smaller than 4x4.
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or any(s <= 0 for s in shape):
        raise ValueError(f"image_shape must be (channels, height, width), got {tuple(image_shape)}")
    _, height, width = shape
    halvings = 0
    while halvings < 2 or max(height, width) > CONV_MAX_SIDE:
        if height % 2 or width % 2 or min(height, width) // 2 < CONV_MIN_SIDE:
            raise ValueError(
                f"arch='conv' cannot take images of shape {shape}: its stride-2 convolutions "
                f"halve each side exactly, at least twice and until it is at most "
                f"{CONV_MAX_SIDE}, leaving at least {CONV_MIN_SIDE} pixels (e.g. (1, 28, 28), "
                f"(3, 32, 32), (3, 64, 64))"
            )
        height, width, halvings = height // 2, width // 2, halvings + 1
    return shape, halvings, (height, width)


def _conv_channels(channels: Sequence[int] | None, count: int, name: str) -> list[int]:
    """``channels`` as ``count`` positive ints; ``None``: 32, 64, 128, ... (``count`` of them)."""
    if channels is None:
        return [32 * 2**i for i in range(count)]
    sizes = [int(c) for c in channels]
    if len(sizes) != count or any(c <= 0 for c in sizes):
        raise ValueError(f"{name} must be {count} positive channel counts here, got {sizes}")
    return sizes


def conv_encoder_body(
    features: int = 256, channels: Sequence[int] | None = None, activation: str = "relu",
    image_shape: Sequence[int] = DEFAULT_IMAGE_SHAPE,
) -> PyroModule:
    """Convolutional feature extractor for flattened images ``[..., C*H*W]`` (channel-major).

    ``[..., C*H*W] -> [C, H, W] -> n convs 4x4 stride 2 (each halves H and W) -> linear ->
    [..., features]``, with ``activation`` after every layer; ``n`` follows the rule of
    [`conv_layout`][] (28x28 -> 14x14 -> 7x7 for MNIST).

    Args:
        features: output width (default 256).
        channels: the ``n`` convolutions' channel counts (default 32, 64, ...: ``(32, 64)``
            for 28x28 and 32x32 images, ``(32, 64, 128)`` for 64x64).
        activation: nonlinearity name (default ``"relu"``).
        image_shape: ``(C, H, W)`` of the images (default ``(1, 28, 28)``).
    """
    shape, count, (height, width) = conv_layout(image_shape)
    sizes = _conv_channels(channels, count, "channels")
    layers: list[nn.Module] = [nn.Unflatten(1, shape)]
    for n_in, n_out in zip([shape[0], *sizes[:-1]], sizes, strict=True):
        layers += [nn.Conv2d(n_in, n_out, 4, stride=2, padding=1), activation_layer(activation)]
    layers += [
        nn.Flatten(1),
        nn.Linear(sizes[-1] * height * width, features),
        activation_layer(activation),
    ]
    return as_pyro(_FlattenBatch(nn.Sequential(*layers), math.prod(shape)))


def conv_decoder(
    latent_dim: int,
    out_channels: int = 1,
    features: int = 256,
    channels: Sequence[int] | None = None,
    activation: str = "relu",
    image_shape: Sequence[int] = DEFAULT_IMAGE_SHAPE,
) -> PyroModule:
    """Transposed-convolution decoder: ``[..., K] -> [..., out_channels * C*H*W]``.

    ``linear -> linear -> [c1, h, w] -> n deconvs 4x4 stride 2 (each doubles the sides) ->
    [out_channels * C, H, W]``, the mirror of [`conv_encoder_body`][] (for 28x28:
    7x7 -> 14x14 -> 28x28), flattened channel-major: output map ``j`` is
    ``[..., j*H*W:(j+1)*H*W]``, and map ``j = head * C + c`` is head ``head`` of colour
    channel ``c``, so the ``out_channels`` heads are consecutive blocks of ``C*H*W`` values,
    each laid out as the data. The output is linear (logits, means or log-variances: the
    likelihood decides).

    Args:
        latent_dim: K.
        out_channels: output heads per pixel value (default 1; 2 for a mean and a log-variance).
        features: width of the first linear layer (default 256).
        channels: the ``n`` transposed convolutions' input channels (default ..., 64, 32:
            ``(64, 32)`` for 28x28 and 32x32 images, ``(128, 64, 32)`` for 64x64).
        activation: nonlinearity name (default ``"relu"``).
        image_shape: ``(C, H, W)`` of the images (default ``(1, 28, 28)``).
    """
    shape, count, (height, width) = conv_layout(image_shape)
    sizes = _conv_channels(channels, count, "channels")
    if channels is None:
        sizes = sizes[::-1]
    layers: list[nn.Module] = [
        nn.Linear(latent_dim, features),
        activation_layer(activation),
        nn.Linear(features, sizes[0] * height * width),
        activation_layer(activation),
        nn.Unflatten(1, (sizes[0], height, width)),
    ]
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.ConvTranspose2d(n_in, n_out, 4, stride=2, padding=1),
                   activation_layer(activation)]
    layers += [
        nn.ConvTranspose2d(sizes[-1], out_channels * shape[0], 4, stride=2, padding=1),
        nn.Flatten(1),
    ]
    return as_pyro(_FlattenBatch(nn.Sequential(*layers), latent_dim))


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
    image_shape: Sequence[int] | None = None,
) -> GaussianEncoder:
    """A Gaussian encoder ``[..., D] -> (loc [..., K], scale [..., K])``.

    Args:
        arch: ``"mlp"`` (``D -> hidden_sizes... -> heads``) or ``"conv"`` (images of
            ``image_shape``, [`conv_encoder_body`][] with ``features = hidden_sizes[-1]``).
        data_dim: D, the product of ``image_shape`` when that is given (784 for the default
            ``"conv"`` shape).
        latent_dim: K.
        hidden_sizes: hidden widths (default ``(400,)``).
        activation: nonlinearity name (default ``"relu"``).
        image_shape: ``(C, H, W)`` of the flattened images (default None: ``(1, 28, 28)``
            for ``"conv"``; ``"mlp"`` only checks that it multiplies to D).
    """
    hidden_sizes = _check_arch(arch, data_dim, hidden_sizes, image_shape)
    body = build_body(arch, data_dim, hidden_sizes, activation, image_shape)
    return GaussianEncoder(body, hidden_sizes[-1], latent_dim)


def build_body(
    arch: str, data_dim: int, hidden_sizes: Sequence[int] = (400,), activation: str = "relu",
    image_shape: Sequence[int] | None = None,
) -> PyroModule:
    """A feature extractor ``[..., D] -> [..., hidden_sizes[-1]]``, activated at its output.

    ``"mlp"``: ``D -> hidden_sizes...``; ``"conv"``: [`conv_encoder_body`][] with
    ``features = hidden_sizes[-1]`` for images of ``image_shape`` (default None:
    ``(1, 28, 28)``). The body of every encoder and classifier.
    """
    hidden_sizes = _check_arch(arch, data_dim, hidden_sizes, image_shape)
    if arch == "mlp":
        return mlp([data_dim, *hidden_sizes], activation, activate_last=True)
    return conv_encoder_body(hidden_sizes[-1], activation=activation,
                             image_shape=image_shape or DEFAULT_IMAGE_SHAPE)


class Classifier(PyroModule):
    """``x [..., D] -> logits [..., C]``: a body ([`build_body`][]) and a linear head."""

    def __init__(
        self, arch: str, data_dim: int, num_classes: int, hidden_sizes: Sequence[int],
        activation: str = "relu", image_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.body = build_body(arch, data_dim, hidden_sizes, activation, image_shape)
        self.head = as_pyro(nn.Linear(int(hidden_sizes[-1]), num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class LabelledGaussianEncoder(PyroModule):
    """``(x [B, D], y) -> (loc, scale)`` of a diagonal Gaussian ``q(z | x, y)``.

    ``x`` goes through a body ([`build_body`][]) once; the label enters through a learned
    embedding added to a joint hidden layer (the same as a linear layer on
    ``[features, one_hot(y)]``), so with ``y`` enumerated as ``[C, 1]`` the output is
    ``[C, B, K]`` without copying ``x`` C times. ``scale = softplus(raw) + min_scale``.
    ``image_shape`` is that of [`build_body`][].
    """

    def __init__(
        self, arch: str, data_dim: int, num_classes: int, latent_dim: int,
        hidden_sizes: Sequence[int], activation: str = "relu", min_scale: float = 1e-4,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        width = int(hidden_sizes[-1])
        self.body = build_body(arch, data_dim, hidden_sizes, activation, image_shape)
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
    image_shape: Sequence[int] | None = None,
) -> PyroModule:
    """A decoder ``[..., K] -> [..., num_heads * D]`` with a linear output.

    Args:
        arch: ``"mlp"`` (``K -> hidden_sizes... -> num_heads * D``) or ``"conv"``
            ([`conv_decoder`][] with ``out_channels = num_heads``).
        latent_dim: K.
        data_dim: D, the product of ``image_shape`` when that is given (784 for the default
            ``"conv"`` shape).
        hidden_sizes: hidden widths, from the latent side (default ``(400,)``).
        activation: nonlinearity name (default ``"relu"``).
        num_heads: output values per pixel value (1, or 2 for a mean and a log-variance).
        image_shape: ``(C, H, W)`` as in [`build_encoder`][] (default None).
    """
    hidden_sizes = _check_arch(arch, data_dim, hidden_sizes, image_shape)
    if arch == "mlp":
        return mlp([latent_dim, *hidden_sizes, num_heads * data_dim], activation)
    return conv_decoder(latent_dim, num_heads, hidden_sizes[0], activation=activation,
                        image_shape=image_shape or DEFAULT_IMAGE_SHAPE)


def check_image_shape(
    arch: str, data_dim: int, image_shape: Sequence[int] | None
) -> tuple[int, int, int] | None:
    """``image_shape`` as a tuple ``(C, H, W)`` (None stays None), checked against ``arch``
    and ``data_dim``: a ``ValueError`` if its product is not ``data_dim`` or, for ``"conv"``,
    if the conv networks cannot take it ([`conv_layout`][]; None stands for ``(1, 28, 28)``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHITECTURES}")
    shape = None if image_shape is None else tuple(int(s) for s in image_shape)
    if arch == "conv":
        conv_layout(shape or DEFAULT_IMAGE_SHAPE)
    if shape is not None and math.prod(shape) != data_dim:
        raise ValueError(f"data_dim={data_dim} must be the product of image_shape {shape} "
                         f"({math.prod(shape)})")
    if arch == "conv" and shape is None and data_dim != math.prod(DEFAULT_IMAGE_SHAPE):
        raise ValueError(
            f"arch='conv' takes 28x28 images (data_dim=784) unless image_shape=(C, H, W) is "
            f"given, got data_dim={data_dim}"
        )
    return shape


def _check_arch(
    arch: str, data_dim: int, hidden_sizes: Sequence[int], image_shape: Sequence[int] | None
) -> list[int]:
    check_image_shape(arch, data_dim, image_shape)
    sizes = [int(s) for s in hidden_sizes]
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"hidden_sizes must be a non-empty list of positive ints, got {sizes}")
    return sizes
