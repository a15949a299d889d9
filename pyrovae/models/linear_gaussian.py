"""The amortised linear-Gaussian guide shared by PPCA, factor analysis and ICA, and the exact
posterior of a linear-Gaussian model.

For ``z ~ N(0, I_K)``, ``x | z ~ N(W z + mu, diag(psi))`` the posterior is Gaussian with a mean
linear in ``x`` and a covariance that does not depend on it::

    p(z | x) = N(A (x - mu), G),    G = (I_K + W^T Psi^{-1} W)^{-1},    A = G W^T Psi^{-1}

([`exact_posterior`][]; PPCA is ``psi = sigma2``, where ``A = M^{-1} W^T`` and
``G = sigma2 M^{-1}`` with ``M = W^T W + sigma2 I``). The guide
``q(z | x) = N(B x + c, L L^T)`` ([`LinearGaussianGuide`][]) has this form, so it can be exact.
"""

from __future__ import annotations

from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam, pyro_method

from .base import (
    check_data,
    check_finite,
    check_once,
    check_positive_int,
    data_plate,
    standard_normal,
    take,
)


class AffineGaussian(NamedTuple):
    """``N(weight @ x + bias, cov)``: ``weight`` [K, D], ``bias`` [K], ``cov`` [K, K]."""

    weight: torch.Tensor
    bias: torch.Tensor
    cov: torch.Tensor

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean for each row of ``x`` [N, D]: [N, K]."""
        return x @ self.weight.T + self.bias


def exact_posterior(W: torch.Tensor, mu: torch.Tensor, noise_var: torch.Tensor) -> AffineGaussian:
    """The exact posterior of ``z ~ N(0, I)``, ``x | z ~ N(W z + mu, diag(noise_var))``.

    Args:
        W: loadings [D, K].
        mu: mean [D].
        noise_var: the noise variances, a 0-d tensor (PPCA) or [D] (factor analysis).

    Returns:
        ``AffineGaussian(A, -A mu, G)`` with ``G = (I + W^T Psi^{-1} W)^{-1}`` and
        ``A = G W^T Psi^{-1}``.
    """
    k = W.shape[1]
    scaled = W / (noise_var.unsqueeze(-1) if noise_var.dim() else noise_var)  # Psi^{-1} W
    precision = torch.eye(k, dtype=W.dtype, device=W.device) + W.T @ scaled
    cov = torch.linalg.inv(precision)
    weight = cov @ scaled.T
    return AffineGaussian(weight, -weight @ mu, cov)


def check_linear_arguments(data_dim: int, latent_dim: int, min_noise: float) -> None:
    """The constructor checks of the linear models with a noise floor (FA, ICA)."""
    check_positive_int(data_dim, "data_dim")
    check_positive_int(latent_dim, "latent_dim")
    if not min_noise > 0:
        raise ValueError(f"min_noise must be > 0, got {min_noise!r}")


class LinearGaussianGuide:
    """Mixin for a ``ConfigurableModule``: the guide ``q(z | x) = N(B x + c, L L^T)``.

    Parameters (on the model itself, so checkpoints keep their names): ``encoder_weight`` B
    [K, D], ``encoder_bias`` c [K] and a lower-triangular ``guide_scale_tril`` L [K, K]. The
    latent site is named ``latent_site`` (``"z"``; ICA's is ``"s"``). The model class sets
    ``data_dim`` and ``latent_dim`` and calls `_init_guide` after creating its own
    parameters (the order of random draws fixes seeded initialisations).
    """

    latent_site = "z"

    def _init_guide(self, init_scale: float) -> None:
        k, d = self.latent_dim, self.data_dim
        self.encoder_weight = PyroParam(init_scale * torch.randn(k, d))
        self.encoder_bias = PyroParam(torch.zeros(k))
        self.guide_scale_tril = PyroParam(torch.eye(k), constraint=constraints.lower_cholesky)

    @pyro_method
    def guide(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        """``q(z | x) = N(B x + c, L L^T)`` for the rows ``subsample`` of ``x`` [N, D]."""
        self._check_inputs(x)
        with data_plate(x, subsample):
            loc = take(x, subsample) @ self.encoder_weight.T + self.encoder_bias
            pyro.sample(
                self.latent_site, dist.MultivariateNormal(loc, scale_tril=self.guide_scale_tril)
            )

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's ``(loc [N, K], scale_tril [K, K])`` for data ``x`` [N, D]."""
        check_data(x, self.data_dim)
        loc = x @ self.encoder_weight.detach().T + self.encoder_bias.detach()
        return loc, self.guide_scale_tril.detach()

    @torch.no_grad()
    def guide_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's ``(mean [N, K], cov [K, K])`` for data ``x`` [N, D]."""
        loc, L = self.encode(x)
        return loc, L @ L.T

    @torch.no_grad()
    def set_guide(self, posterior: AffineGaussian) -> None:
        """Set the guide to ``N(weight x + bias, cov)``."""
        self.encoder_weight = posterior.weight
        self.encoder_bias = posterior.bias
        self.guide_scale_tril = torch.linalg.cholesky(posterior.cov)

    def _check_inputs(self, x: torch.Tensor) -> None:
        """The data-check rule of [`pyrovae.models.base`][]: shapes now, finite values once."""
        check_data(x, self.data_dim)
        check_once(x, "finite", check_finite)

    def check_data(self, x: torch.Tensor) -> None:
        """Check the shape of ``x`` and that its values are finite, now."""
        check_data(x, self.data_dim)
        check_finite(x)


class LinearGaussianModel(LinearGaussianGuide):
    """What PPCA and factor analysis share beyond the guide: ``z ~ N(0, I)``,
    ``x | z ~ N(W z + mu, diag noise)`` with the exact marginal and posterior.

    The class sets ``marginal`` (``fn(x, params) -> log p(x) [N]``) and ``noise_variance``
    (sigma^2 or psi), and has ``params()`` returning ``(W, mu, noise)``.
    """

    marginal = None

    @property
    def noise_variance(self) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x_n)`` under the learned parameters, for each row of ``x``: [N]."""
        check_data(x, self.data_dim)
        return type(self).marginal(x, self.params())

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean ``E[x | z] = W z + mu`` [..., D] for ``z`` [..., K]."""
        return z @ self.W.detach().T + self.mu.detach()

    @torch.no_grad()
    def sample(
        self, num_samples: int, mean: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``z ~ N(0, I)``, then ``E[x | z]`` (default) or a draw of ``x``: [num_samples, D].

        The draws use ``generator`` (default: torch's) on its device (the CPU without one), then
        move to the model's device, so a seeded sample is the same on every device.
        """
        check_positive_int(num_samples, "num_samples")
        x = self.decode(standard_normal((num_samples, self.latent_dim), self.mu, generator))
        if mean:
            return x
        return x + self.noise_variance.detach().sqrt() * standard_normal(x.shape, x, generator)

    @torch.no_grad()
    def set_guide_to_posterior(self, params=None) -> None:
        """Make the guide the exact posterior of ``params`` (default: the model's own)."""
        self.set_guide(exact_posterior(*(self.params() if params is None else params)))
