"""Non-negative matrix factorisation as a Poisson-Gamma latent-variable model.

Generative story::

    z_nk ~ Gamma(a, b)                              k = 1..K   (non-negative activations)
    x_nd | z_n ~ Poisson(sum_k z_nk W_kd)           d = 1..D,  n = 1..N

with non-negative factors ``W`` [K, D] (a point-estimated parameter) and counts ``x``. Because
everything is non-negative, the factors can only *add up*: each ``W_k`` becomes a part (a
stroke of a digit) rather than a signed global pattern as in PCA. Maximising the Poisson
likelihood over ``z`` and ``W`` is NMF with the generalised KL divergence (Lee & Seung); the
Gamma prior on ``z`` and the variational treatment of ``z`` are the Bayesian version
(Cemgil, 2009). The factorisation ``Z W`` is identified only up to a permutation of the factors
and a positive rescaling ``z_k -> c z_k, W_k -> W_k / c``.

The guide is amortised: ``q(z_n | x_n) = LogNormal(mu(x_n), sigma(x_n))`` with ``mu`` and
``sigma`` computed by a small network from ``log(1 + x_n)``; it is reparameterisable, so the
ELBO's gradient has low variance.

References:
    D. D. Lee and H. S. Seung. Learning the parts of objects by non-negative matrix
    factorization. Nature 401, 1999.
    A. T. Cemgil. Bayesian inference for nonnegative matrix factorisation models.
    Computational Intelligence and Neuroscience, 2009.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam, pyro_method
from torch import nn

from .base import (
    ConfigurableModule,
    DataError,
    check_data,
    check_hidden_sizes,
    check_once,
    check_positive_int,
    data_plate,
    take,
)
from .networks import mlp


def check_counts(x: torch.Tensor, data_dim: int) -> None:
    """Raise ``ValueError`` unless ``x`` is a float [N, data_dim] of non-negative integers."""
    check_data(x, data_dim)
    if not bool(((x >= 0) & (x == x.round())).all()):
        raise DataError(
            "NMF's Poisson likelihood needs counts: x must hold non-negative integers "
            "(see pyrovae.models.nmf.to_counts)"
        )


def to_counts(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Intensities in [0, 1] as counts: ``round(scale * x)`` (same dtype as ``x``)."""
    return (x * scale).round()


class NMF(ConfigurableModule):
    """Poisson-Gamma NMF with an amortised LogNormal guide, as a Pyro model/guide pair.

    Model: ``z ~ Gamma(prior_shape, prior_rate)^K``, ``x | z ~ Poisson(z W)`` with ``W`` [K, D]
    a positive parameter; ``x`` holds counts (non-negative integers stored as floats).

    Guide: ``q(z | x) = LogNormal(loc, scale)`` with ``(loc, scale)`` [K] each from a network
    applied to ``log(1 + x)``: an MLP ([`pyrovae.models.networks.mlp`][]) with softplus hidden
    layers of widths ``hidden_sizes``, a linear map when ``hidden_sizes`` is empty.

    Args:
        data_dim: D, the observed dimension.
        latent_dim: K, the number of factors, ``1 <= K``.
        hidden_sizes: widths of the guide's hidden layers (default ``(64,)``; ``()`` for a
            linear guide).
        prior_shape: the Gamma prior's shape ``a`` (default 1.0, an exponential prior).
        prior_rate: the Gamma prior's rate ``b`` (default 1.0).
        init_scale: scale of the random initialisation of ``W`` (default 0.1).
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden_sizes: Sequence[int] = (64,),
        prior_shape: float = 1.0,
        prior_rate: float = 1.0,
        init_scale: float = 0.1,
    ) -> None:
        check_positive_int(data_dim, "data_dim")
        check_positive_int(latent_dim, "latent_dim")
        hidden_sizes = check_hidden_sizes(hidden_sizes, allow_empty=True)
        if not (prior_shape > 0 and prior_rate > 0):
            raise ValueError(
                f"prior_shape and prior_rate must be > 0, got {prior_shape}, {prior_rate}"
            )
        super().__init__(
            data_dim=data_dim,
            latent_dim=latent_dim,
            hidden_sizes=hidden_sizes,
            prior_shape=prior_shape,
            prior_rate=prior_rate,
            init_scale=init_scale,
        )
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.W = PyroParam(
            init_scale * (0.5 + torch.rand(latent_dim, data_dim)), constraint=constraints.positive
        )
        self.encoder = mlp([data_dim, *hidden_sizes, 2 * latent_dim], activation="softplus")

    @classmethod
    def upgrade_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Old configs had ``hidden_dim`` (one width, 0 for linear): now ``hidden_sizes``."""
        config = dict(config)
        if "hidden_dim" in config:
            width = config.pop("hidden_dim")
            config["hidden_sizes"] = [width] if width else []
        return config

    @property
    def prior_mean(self) -> float:
        """``E[z_k] = a / b``."""
        return self.config["prior_shape"] / self.config["prior_rate"]

    @torch.no_grad()
    def initialise(self, x: torch.Tensor) -> NMF:
        """Scale ``W`` so that the prior mean of ``z W`` matches the mean of the counts ``x``.

        ``W_kd = mean_n(x_nd) / (K a / b) * u_kd`` with ``u_kd ~ Uniform(0.5, 1.5)`` (from
        torch's global generator), floored at 1e-3 of the largest mean.
        """
        check_counts(x, self.data_dim)
        mean = x.mean(0)
        mean = mean.clamp(min=1e-3 * float(mean.max().clamp(min=1e-6)))
        noise = 0.5 + torch.rand(self.latent_dim, self.data_dim, dtype=x.dtype, device=x.device)
        self.W = mean / (self.latent_dim * self.prior_mean) * noise
        return self

    @pyro_method
    def model(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        """``x`` [N, D] counts; ``subsample`` optional LongTensor [M] of rows (scaled by N/M)."""
        self._check_inputs(x)
        shape = x.new_full((self.latent_dim,), self.config["prior_shape"])
        rate = x.new_full((self.latent_dim,), self.config["prior_rate"])
        with data_plate(x, subsample):
            z = pyro.sample("z", dist.Gamma(shape, rate).to_event(1))
            pyro.sample("x", dist.Poisson(z @ self.W).to_event(1), obs=take(x, subsample))

    def _guide_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(torch.log1p(x))
        loc, raw_scale = out.split(self.latent_dim, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + 1e-3

    @pyro_method
    def guide(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        self._check_inputs(x)
        with data_plate(x, subsample):
            loc, scale = self._guide_params(take(x, subsample))
            pyro.sample("z", dist.LogNormal(loc, scale).to_event(1))

    def _check_inputs(self, x: torch.Tensor) -> None:
        """The data-check rule of [`pyrovae.models.base`][]: shapes now, counts once."""
        check_data(x, self.data_dim)
        check_once(x, "counts", lambda t: check_counts(t, self.data_dim))

    def check_data(self, x: torch.Tensor) -> None:
        """Check the shape of ``x`` and that it holds counts, now."""
        check_counts(x, self.data_dim)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's LogNormal ``(loc [N, K], scale [N, K])`` for counts ``x`` [N, D]."""
        check_data(x, self.data_dim)
        return self._guide_params(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The Poisson rates ``E[x | z] = z W`` [..., D] for activations ``z`` [..., K]."""
        return z @ self.W

    @torch.no_grad()
    def factors(self) -> torch.Tensor:
        """The learned non-negative factors ``W`` [K, D] (detached)."""
        return self.W.detach()

    @torch.no_grad()
    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """The guide's posterior mean of ``z`` for counts ``x`` [N, D]: [N, K]."""
        check_data(x, self.data_dim)
        loc, scale = self._guide_params(x)
        return torch.exp(loc + 0.5 * scale**2)
