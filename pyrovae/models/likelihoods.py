"""Observation models ``p(x | z)`` for a decoder's output.

A likelihood turns the decoder's raw output ``out`` (``[..., num_heads * D]``) into a Pyro
distribution over ``x`` with one event dimension (the D pixels), and into the image the model
shows for ``z`` (its mean). Three are built in:

* ``"bernoulli"``: ``x_d ~ Bernoulli(sigmoid(out_d))`` (logits) for binary data. Non-binary data
  is an error (a ``ValueError`` naming the problem), unless ``allow_continuous=True``: then the
  Bernoulli log-mass is evaluated at values in [0, 1] (the usual "binary cross-entropy" loss on
  grey-level images), which is *not* a normalised density, so its numbers are not log-likelihoods.
* ``"gaussian"``: ``x ~ N(f(out), sigma^2 I)`` with a fixed ``sigma``.
* ``"gaussian_learned"``: ``x_d ~ N(f(mean_d), exp(log_var_d))`` with per-pixel mean and
  log-variance heads (``num_heads = 2``; the log-variance is softly bounded below by
  ``2 log(min_scale)`` so that constant pixels cannot drive the density to infinity).

``f`` is ``sigmoid`` (default, for images in [0, 1]) or ``identity``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F

from .base import DataError, check_finite

LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_learned")
MEAN_ACTIVATIONS = ("sigmoid", "identity")


class Likelihood:
    """Base class: ``num_heads`` decoder outputs per pixel -> a distribution over ``x``."""

    name = "likelihood"
    num_heads = 1

    def distribution(self, out: torch.Tensor) -> dist.TorchDistribution:
        """The distribution of ``x`` [..., D] given decoder output ``out`` [..., heads * D]."""
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """``E[x | z]`` [..., D]: probabilities for Bernoulli, means for Gaussians."""
        raise NotImplementedError

    @property
    def check_key(self) -> str:
        """Names the value check of [`check`][] (see [`pyrovae.models.base.check_once`][])."""
        return self.name

    def check(self, x: torch.Tensor) -> None:
        """Raise a ``DataError`` if ``x`` is outside this likelihood's support (one host sync).

        Gaussians: every value finite.
        """
        check_finite(x)


def _mean_activation(name: str):
    if name not in MEAN_ACTIVATIONS:
        raise ValueError(f"unknown mean_activation {name!r}; choose one of {MEAN_ACTIVATIONS}")
    return torch.sigmoid if name == "sigmoid" else (lambda t: t)


class BernoulliLikelihood(Likelihood):
    """``x_d ~ Bernoulli(logits=out_d)``, independent over the D pixels.

    Args:
        allow_continuous: accept values in [0, 1] that are not 0 or 1 (default False: they
            raise a ``ValueError`` in [`check`][Likelihood.check], since the Bernoulli log-mass of a
            grey level is not a log-likelihood).
    """

    name = "bernoulli"

    def __init__(self, allow_continuous: bool = False) -> None:
        self.allow_continuous = bool(allow_continuous)

    def distribution(self, out: torch.Tensor) -> dist.TorchDistribution:
        validate = False if self.allow_continuous else None
        return dist.Bernoulli(logits=out, validate_args=validate).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)

    @property
    def check_key(self) -> str:
        return "bernoulli-unit-interval" if self.allow_continuous else "bernoulli-binary"

    def check(self, x: torch.Tensor) -> None:
        if self.allow_continuous:
            if not bool(((x >= 0) & (x <= 1)).all()):
                raise DataError("x must lie in [0, 1] for a Bernoulli likelihood")
            return
        if not bool(((x == 0) | (x == 1)).all()):
            raise DataError(
                "the Bernoulli likelihood needs binary data (every value 0 or 1), but x has other "
                "values: binarise it (pyrovae.data.binarize / DynamicBinarized), choose a Gaussian "
                "likelihood, or pass allow_continuous=True to evaluate the Bernoulli log-mass at "
                "grey levels (not a normalised density)"
            )


class GaussianLikelihood(Likelihood):
    """``x ~ N(f(out), sigma^2 I)`` with a fixed ``sigma > 0``.

    Args:
        sigma: the observation noise's standard deviation (default 0.1).
        mean_activation: ``"sigmoid"`` (default) or ``"identity"``.
    """

    name = "gaussian"

    def __init__(self, sigma: float = 0.1, mean_activation: str = "sigmoid") -> None:
        if not (isinstance(sigma, (int, float)) and sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a positive number, got {sigma!r}")
        self.sigma = float(sigma)
        self._f = _mean_activation(mean_activation)

    def distribution(self, out: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(self._f(out), self.sigma).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self._f(out)


class LearnedGaussianLikelihood(Likelihood):
    """``x_d ~ N(f(m_d), exp(v_d))`` with ``out = [m, v_raw]`` (mean and log-variance heads).

    ``v = lo + softplus(v_raw - lo)`` with ``lo = 2 log(min_scale)``: a smooth lower bound.

    Args:
        min_scale: the smallest standard deviation, approached smoothly (default 0.01).
        mean_activation: ``"sigmoid"`` (default) or ``"identity"``.
    """

    name = "gaussian_learned"
    num_heads = 2

    def __init__(self, min_scale: float = 0.01, mean_activation: str = "sigmoid") -> None:
        if not (isinstance(min_scale, (int, float)) and min_scale > 0):
            raise ValueError(f"min_scale must be a positive number, got {min_scale!r}")
        self.min_log_var = 2.0 * math.log(min_scale)
        self._f = _mean_activation(mean_activation)

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean [..., D], log_var [..., D])`` from ``out`` [..., 2D]."""
        raw_mean, raw_log_var = out.chunk(2, dim=-1)
        log_var = self.min_log_var + F.softplus(raw_log_var - self.min_log_var)
        return self._f(raw_mean), log_var

    def distribution(self, out: torch.Tensor) -> dist.TorchDistribution:
        mean, log_var = self.split(out)
        return dist.Normal(mean, (0.5 * log_var).exp()).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self.split(out)[0]


def make_likelihood(
    name: str,
    *,
    sigma: float = 0.1,
    min_scale: float = 0.01,
    mean_activation: str = "sigmoid",
    allow_continuous: bool = False,
) -> Likelihood:
    """A likelihood by name (see the module docstring); unused options are ignored."""
    if name == "bernoulli":
        return BernoulliLikelihood(allow_continuous)
    if name == "gaussian":
        return GaussianLikelihood(sigma, mean_activation)
    if name == "gaussian_learned":
        return LearnedGaussianLikelihood(min_scale, mean_activation)
    raise ValueError(f"unknown likelihood {name!r}; choose one of {LIKELIHOODS}")
