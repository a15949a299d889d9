"""Factor analysis: PPCA with a separate noise variance for every observed dimension.

Generative story::

    z_n ~ N(0, I_K)
    x_n | z_n ~ N(W z_n + mu, Psi)          Psi = diag(psi_1, ..., psi_D),  n = 1..N

Marginally ``x_n ~ N(mu, W W^T + Psi)``, so the likelihood is exact ([`log_marginal`][]), and
the posterior is Gaussian with a mean linear in ``x`` and a covariance that does not depend on it,

    p(z_n | x_n) = N(G W^T Psi^{-1} (x_n - mu), G),      G = (I_K + W^T Psi^{-1} W)^{-1},

([`posterior`][]). An amortised *linear* Gaussian guide can therefore be exact, and SVI on the
ELBO recovers maximum likelihood, as EM does (scikit-learn's ``FactorAnalysis``). Unlike PPCA the
ML solution has no eigendecomposition: ``Psi`` lets each pixel keep its own noise, so ``W`` models
the *correlations* between dimensions rather than their variances.

References:
    D. J. Bartholomew, M. Knott and I. Moustaki. Latent Variable Models and Factor Analysis. 2011.
    D. B. Rubin and D. T. Thayer. EM algorithms for ML factor analysis. Psychometrika 47, 1982.
"""

from __future__ import annotations

from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam, pyro_method

from .base import ConfigurableModule, check_data, data_plate, take
from .linear_gaussian import LinearGaussianModel, check_linear_arguments, exact_posterior
from .ppca import gaussian_log_density


class FAParams(NamedTuple):
    """Factor-analysis parameters: loadings ``W`` [D, K], mean ``mu`` [D], noise ``psi`` [D]."""

    W: torch.Tensor
    mu: torch.Tensor
    psi: torch.Tensor


def marginal_covariance(params: FAParams) -> torch.Tensor:
    """``C = W W^T + diag(psi)`` [D, D]."""
    W, _, psi = params
    return W @ W.T + torch.diag(psi)


def log_marginal(x: torch.Tensor, params: FAParams) -> torch.Tensor:
    """Exact ``log p(x_n) = log N(x_n; mu, W W^T + diag(psi))`` for the rows of x [N, D]: [N]."""
    return gaussian_log_density(x, params.mu, marginal_covariance(params))


def posterior(x: torch.Tensor, params: FAParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact posterior ``p(z_n | x_n) = N(G W^T Psi^{-1} (x_n - mu), G)``.

    Returns:
        ``(mean [N, K], cov [K, K])`` with ``G = (I + W^T Psi^{-1} W)^{-1}`` the same for all rows.
    """
    exact = exact_posterior(*params)
    return exact.mean(x), exact.cov


class FactorAnalysis(LinearGaussianModel, ConfigurableModule):
    """Factor analysis as a Pyro model/guide pair with an amortised linear-Gaussian guide.

    Model: ``z ~ N(0, I_K)``, ``x | z ~ N(W z + mu, diag(psi))``; learnable ``W`` [D, K],
    ``mu`` [D] and ``psi`` [D] with ``psi > min_noise``.

    Guide: ``q(z | x) = N(A x + b, L L^T)`` with ``A`` [K, D], ``b`` [K] and a lower-triangular
    ``L`` [K, K]. The exact posterior ([`posterior`][]) has this form, so the ELBO can reach
    ``log p(x)`` and its maximum is the maximum-likelihood fit.

    Args:
        data_dim: D, the observed dimension.
        latent_dim: K, the number of factors, ``1 <= K``.
        min_noise: lower bound on every ``psi_d`` (default 1e-4). Dimensions that never vary
            (MNIST's border pixels) would otherwise drive ``psi_d -> 0`` and the likelihood
            to infinity.
        init_scale: scale of the random initialisation of ``W`` and ``A`` (default 0.1).

    Methods: `encode` (the guide's ``loc`` and ``scale_tril``), `decode`
    (``W z + mu``), `sample`, [`log_marginal`][] (exact), `guide_posterior`,
    `set_guide_to_posterior`, [`params`][], [`initialise`][]. The guide is
    [`LinearGaussianGuide`][linear_gaussian.LinearGaussianGuide].
    """

    def __init__(
        self, data_dim: int, latent_dim: int, min_noise: float = 1e-4, init_scale: float = 0.1
    ) -> None:
        check_linear_arguments(data_dim, latent_dim, min_noise)
        super().__init__(
            data_dim=data_dim, latent_dim=latent_dim, min_noise=min_noise, init_scale=init_scale
        )
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.W = PyroParam(init_scale * torch.randn(data_dim, latent_dim))
        self.mu = PyroParam(torch.zeros(data_dim))
        self.psi = PyroParam(
            torch.ones(data_dim), constraint=constraints.greater_than(float(min_noise))
        )
        self._init_guide(init_scale)

    @torch.no_grad()
    def initialise(self, x: torch.Tensor) -> FactorAnalysis:
        """Start from the data: ``mu`` = the mean of ``x`` [N, D], ``psi`` = its variances."""
        check_data(x, self.data_dim)
        self.mu = x.mean(0)
        self.psi = x.var(0).clamp(min=2 * self.config["min_noise"])
        return self

    @pyro_method
    def model(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        """``x`` [N, D]; ``subsample`` optional LongTensor [M] of rows (scaled by N/M)."""
        self._check_inputs(x)
        with data_plate(x, subsample):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            loc = z @ self.W.T + self.mu
            pyro.sample("x", dist.Normal(loc, self.psi.sqrt()).to_event(1), obs=take(x, subsample))

    @torch.no_grad()
    def params(self) -> FAParams:
        """The learned [`FAParams`][] (detached)."""
        return FAParams(self.W.detach(), self.mu.detach(), self.psi.detach())

    marginal = staticmethod(log_marginal)

    @property
    def noise_variance(self) -> torch.Tensor:
        return self.psi
