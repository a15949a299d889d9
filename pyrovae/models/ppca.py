"""Probabilistic PCA (Tipping & Bishop, 1999) and its exact twin.

Generative story::

    z_n ~ N(0, I_K)
    x_n | z_n ~ N(W z_n + mu, sigma2 I_D)          n = 1..N

so that marginally ``x_n ~ N(mu, W W^T + sigma2 I)`` and the posterior is Gaussian,
``p(z_n | x_n) = N(M^{-1} W^T (x_n - mu), sigma2 M^{-1})`` with ``M = W^T W + sigma2 I_K``.

Everything SVI learns here has a closed form to be checked against: the maximum-likelihood
parameters ([`fit_closed_form`][]), the marginal likelihood ([`log_marginal`][]), the exact
posterior ([`posterior`][]) and the ELBO of any Gaussian guide ([`elbo_closed_form`][]).

References:
    M. E. Tipping and C. M. Bishop. Probabilistic principal component analysis.
    J. R. Statist. Soc. B 61(3), 1999.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam, pyro_method

from .base import ConfigurableModule, check_data, check_positive_int, data_plate, take
from .linear_gaussian import LinearGaussianModel, exact_posterior


class PPCAParams(NamedTuple):
    """PPCA parameters: ``W`` [D, K], ``mu`` [D], ``sigma2`` a 0-d tensor."""

    W: torch.Tensor
    mu: torch.Tensor
    sigma2: torch.Tensor


def _check_x(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a 2-D tensor [N, D], got {shape}")
    check_data(x, x.shape[1])
    if x.shape[0] == 0:
        raise ValueError("x is empty (N = 0)")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf")


def fit_closed_form(x: torch.Tensor, latent_dim: int) -> PPCAParams:
    """Maximum-likelihood PPCA by eigendecomposition of the sample covariance.

    Args:
        x: data [N, D], floating point, N >= 2.
        latent_dim: K, with 1 <= K < D.

    Returns:
        ``PPCAParams`` with ``mu`` the sample mean, ``sigma2`` the mean of the D-K discarded
        eigenvalues and ``W = U_K (Lambda_K - sigma2 I)^{1/2}`` (the rotation R = I), in x's dtype.
    """
    _check_x(x)
    n, d = x.shape
    check_positive_int(latent_dim, "latent_dim")
    if latent_dim >= d:
        raise ValueError(f"latent_dim must be < data dimension {d}, got {latent_dim}")
    if n < 2:
        raise ValueError("need at least 2 data points to fit PPCA")
    mu = x.mean(0)
    centred = x - mu
    cov = centred.T @ centred / n
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0), evecs.flip(1)
    sigma2 = evals[latent_dim:].mean()
    if sigma2 <= 0:
        raise ValueError("data lie in a subspace of dimension <= latent_dim: sigma2 would be 0")
    W = evecs[:, :latent_dim] * (evals[:latent_dim] - sigma2).clamp(min=0).sqrt()
    return PPCAParams(W, mu, sigma2)


def marginal_covariance(params: PPCAParams) -> torch.Tensor:
    """``C = W W^T + sigma2 I`` [D, D]."""
    W, _, sigma2 = params
    return W @ W.T + sigma2 * torch.eye(W.shape[0], dtype=W.dtype, device=W.device)


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """``log N(x_n; mean, cov)`` for the rows of ``x`` [N, D], by one Cholesky factor: [N]."""
    chol = torch.linalg.cholesky(cov)
    white = torch.linalg.solve_triangular(chol, (x - mean).T, upper=False)
    half_logdet = chol.diagonal().log().sum()
    return -0.5 * (white**2).sum(0) - half_logdet - 0.5 * x.shape[-1] * math.log(2 * math.pi)


def log_marginal(x: torch.Tensor, params: PPCAParams) -> torch.Tensor:
    """Exact ``log p(x_n) = log N(x_n; mu, W W^T + sigma2 I)`` for each row: Tensor [N]."""
    return gaussian_log_density(x, params.mu, marginal_covariance(params))


def posterior(x: torch.Tensor, params: PPCAParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact posterior ``p(z_n | x_n) = N(M^{-1} W^T (x_n - mu), sigma2 M^{-1})``.

    Returns:
        ``(mean [N, K], cov [K, K])``: the covariance is the same for every data point.
    """
    exact = exact_posterior(*params)
    return exact.mean(x), exact.cov


def zero_noise_posterior_mean(x: torch.Tensor, params: PPCAParams) -> torch.Tensor:
    """The ``sigma2 -> 0`` limit of the posterior mean, ``(W^T W)^{-1} W^T (x - mu)`` [N, K].

    ``W`` times this is the orthogonal projection of ``x - mu`` onto the span of ``W``: at the
    ML solution, exactly PCA's reconstruction.
    """
    W, mu, _ = params
    return torch.linalg.solve(W.T @ W, W.T @ (x - mu).T).T


def elbo_closed_form(
    x: torch.Tensor, params: PPCAParams, q_mean: torch.Tensor, q_cov: torch.Tensor
) -> torch.Tensor:
    """Exact ELBO of the Gaussian guide ``q(z_n) = N(q_mean[n], q_cov)`` for each row: [N].

    ``E_q[log p(x|z)] - KL(q || N(0, I))`` in closed form; equals [`log_marginal`][] exactly
    when ``q`` is the [`posterior`][], and is below it otherwise.
    """
    W, mu, sigma2 = params
    d, k = W.shape
    resid = x - mu - q_mean @ W.T
    trace_term = torch.trace(W @ q_cov @ W.T)
    expected_loglik = (
        -0.5 * d * torch.log(2 * math.pi * sigma2) - 0.5 * ((resid**2).sum(1) + trace_term) / sigma2
    )
    kl = 0.5 * (torch.trace(q_cov) + (q_mean**2).sum(1) - k - torch.logdet(q_cov))
    return expected_loglik - kl


class PPCA(LinearGaussianModel, ConfigurableModule):
    """Probabilistic PCA as a Pyro model/guide pair with an amortised linear-Gaussian guide.

    Model: ``z ~ N(0, I_K)``, ``x | z ~ N(W z + mu, sigma2 I_D)``; learnable ``W`` [D, K],
    ``mu`` [D] and ``sigma2 > 0`` (a positive constraint).

    Guide: ``q(z | x) = N(A x + b, L L^T)`` with ``A`` [K, D], ``b`` [K] and a lower-triangular
    ``L`` [K, K]. The exact posterior has this form (its mean is linear in x and its covariance
    does not depend on x), so at the optimum the ELBO equals ``log p(x)`` and SVI recovers the
    maximum-likelihood fit.

    Args:
        data_dim: D, the observed dimension.
        latent_dim: K, with 1 <= K.
        init_scale: scale of the random initialisation of ``W`` and ``A`` (default 0.1).

    Methods: `encode` (the guide's ``loc`` and ``scale_tril``), `decode`
    (``W z + mu``), `sample`, [`log_marginal`][] (exact), `guide_posterior`,
    `set_guide_to_posterior`, [`params`][]. The guide is
    [`LinearGaussianGuide`][linear_gaussian.LinearGaussianGuide].
    """

    def __init__(self, data_dim: int, latent_dim: int, init_scale: float = 0.1) -> None:
        check_positive_int(data_dim, "data_dim")
        check_positive_int(latent_dim, "latent_dim")
        super().__init__(data_dim=data_dim, latent_dim=latent_dim, init_scale=init_scale)
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.W = PyroParam(init_scale * torch.randn(data_dim, latent_dim))
        self.mu = PyroParam(torch.zeros(data_dim))
        self.sigma2 = PyroParam(torch.tensor(1.0), constraint=constraints.positive)
        self._init_guide(init_scale)

    def _prior(self, like: torch.Tensor) -> dist.MultivariateNormal:
        eye = torch.eye(self.latent_dim, dtype=like.dtype, device=like.device)
        return dist.MultivariateNormal(like.new_zeros(self.latent_dim), scale_tril=eye)

    @pyro_method
    def model(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        """``x`` [N, D]; ``subsample`` optional LongTensor [M] of rows (scaled by N/M)."""
        self._check_inputs(x)
        W, mu, scale = self.W, self.mu, self.sigma2.sqrt()
        with data_plate(x, subsample):
            z = pyro.sample("z", self._prior(x))
            pyro.sample("x", dist.Normal(z @ W.T + mu, scale).to_event(1), obs=take(x, subsample))

    @torch.no_grad()
    def params(self) -> PPCAParams:
        """The learned ``PPCAParams`` (detached)."""
        return PPCAParams(self.W.detach(), self.mu.detach(), self.sigma2.detach())

    marginal = staticmethod(log_marginal)

    @property
    def noise_variance(self) -> torch.Tensor:
        return self.sigma2
