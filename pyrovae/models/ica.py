"""Independent component analysis as a latent-variable model with heavy-tailed sources.

Generative story (noisy ICA)::

    s_nk ~ Laplace(0, 1/sqrt(2))            k = 1..K   (independent, unit variance)
    x_n | s_n ~ N(A s_n + mu, sigma2 I_D)     n = 1..N

With Gaussian sources this would be PPCA, whose likelihood is unchanged by any rotation
``A -> A R``: the sources could not be told apart. A non-Gaussian (here super-Gaussian, peaked
and heavy-tailed) prior breaks that symmetry, so ``A`` is identifiable up to a permutation and a
sign of its columns ([`match_components`][] aligns two such matrices).

The posterior ``p(s | x)`` is no longer Gaussian, but for small noise it is sharply peaked
around a point that moves (almost) linearly with ``x``; the guide is an amortised Gaussian
``q(s | x) = N(B x + c, L L^T)``, and the ELBO is a lower bound on ``log p(x)`` that is tight
as the noise shrinks.

References:
    A. Hyvarinen, J. Karhunen and E. Oja. Independent Component Analysis. Wiley, 2001.
    B. A. Olshausen and D. J. Field. Emergence of simple-cell receptive field properties by
    learning a sparse code for natural images. Nature 381, 1996.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam, pyro_method

from .base import ConfigurableModule, check_data, data_plate, take
from .linear_gaussian import LinearGaussianGuide, check_linear_arguments

LAPLACE_UNIT_SCALE = 1.0 / math.sqrt(2.0)
"""The Laplace scale ``b`` with variance ``2 b^2 = 1``."""


class ComponentMatch(NamedTuple):
    """How the columns of an estimate line up with a reference (see [`match_components`][]).

    ``order[k]`` is the estimated column matched to reference column ``k``; ``signs[k]`` its sign
    (+1/-1); ``cosines[k]`` the absolute cosine similarity of the pair (1 = the same direction).
    """

    order: torch.Tensor
    signs: torch.Tensor
    cosines: torch.Tensor


def match_components(estimate: torch.Tensor, reference: torch.Tensor) -> ComponentMatch:
    """Match the columns of ``estimate`` [D, K] to those of ``reference`` [D, K].

    Finds the permutation that maximises the summed absolute cosine similarity (the Hungarian
    algorithm, ``scipy.optimize.linear_sum_assignment``), and the sign of each matched pair. Use
    it for anything identified only up to permutation and sign (ICA's mixing matrix or sources)
    or up to permutation and positive scale (NMF's factors, whose cosines are all positive).
    """
    from scipy.optimize import linear_sum_assignment

    if estimate.dim() != 2 or estimate.shape != reference.shape:
        raise ValueError(
            f"need two [D, K] matrices of one shape, got {list(estimate.shape)} "
            f"and {list(reference.shape)}"
        )
    est = estimate.detach().double()
    ref = reference.detach().double()
    est = est / est.norm(dim=0, keepdim=True).clamp(min=1e-300)
    ref = ref / ref.norm(dim=0, keepdim=True).clamp(min=1e-300)
    cosine = ref.T @ est  # [K_ref, K_est]
    rows, cols = linear_sum_assignment(-cosine.abs().cpu().numpy())
    order = torch.as_tensor(cols[rows.argsort()], dtype=torch.long)
    matched = cosine[torch.arange(len(order)), order]
    return ComponentMatch(order, matched.sign().float(), matched.abs().float())


class ICAParams(NamedTuple):
    """ICA parameters: mixing matrix ``A`` [D, K], mean ``mu`` [D], noise ``sigma2`` (0-d)."""

    A: torch.Tensor
    mu: torch.Tensor
    sigma2: torch.Tensor


class ICA(LinearGaussianGuide, ConfigurableModule):
    """Noisy ICA with Laplace sources, as a Pyro model/guide pair.

    Model: ``s ~ Laplace(0, 1/sqrt(2))^K`` (unit variance), ``x | s ~ N(A s + mu, sigma2 I_D)``;
    learnable ``A`` [D, K], ``mu`` [D] and ``sigma2 > min_noise``.

    Guide: ``q(s | x) = N(B x + c, L L^T)``, amortised and linear (``B`` [K, D], ``c`` [K],
    lower-triangular ``L`` [K, K]).

    Args:
        data_dim: D, the observed dimension.
        latent_dim: K, the number of sources, ``1 <= K``.
        min_noise: lower bound on ``sigma2`` (default 1e-4).
        init_scale: scale of the random initialisation of ``A`` and ``B`` (default 0.1).

    Methods: `encode` (the guide's ``loc`` and ``scale_tril``), [`decode`][]
    (``A s + mu``), [`sources`][], `guide_posterior`, [`params`][],
    [`initialise`][]. No ``log_marginal``: with Laplace sources ``p(x)`` has no closed form.
    The guide is [`LinearGaussianGuide`][linear_gaussian.LinearGaussianGuide].
    """

    latent_site = "s"

    def __init__(
        self, data_dim: int, latent_dim: int, min_noise: float = 1e-4, init_scale: float = 0.1
    ) -> None:
        check_linear_arguments(data_dim, latent_dim, min_noise)
        super().__init__(
            data_dim=data_dim, latent_dim=latent_dim, min_noise=min_noise, init_scale=init_scale
        )
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.A = PyroParam(init_scale * torch.randn(data_dim, latent_dim))
        self.mu = PyroParam(torch.zeros(data_dim))
        self.sigma2 = PyroParam(
            torch.tensor(1.0), constraint=constraints.greater_than(float(min_noise))
        )
        self._init_guide(init_scale)

    @torch.no_grad()
    def initialise(self, x: torch.Tensor) -> ICA:
        """Start from the data: ``mu`` = the mean of ``x`` [N, D], ``sigma2`` = its mean variance.

        Starting with a large noise variance lets ``A`` and the guide rotate together freely
        while ``sigma2`` shrinks; started at a small ``sigma2`` (say PPCA's fit) the ELBO is
        badly conditioned in the rotation and SVI barely moves.
        """
        check_data(x, self.data_dim)
        self.mu = x.mean(0)
        self.sigma2 = x.var(0).mean().clamp(min=2 * self.config["min_noise"])
        return self

    @pyro_method
    def model(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        """``x`` [N, D]; ``subsample`` optional LongTensor [M] of rows (scaled by N/M)."""
        self._check_inputs(x)
        with data_plate(x, subsample):
            prior = dist.Laplace(x.new_zeros(self.latent_dim), LAPLACE_UNIT_SCALE)
            s = pyro.sample("s", prior.to_event(1))
            loc = s @ self.A.T + self.mu
            scale = self.sigma2.sqrt()
            pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=take(x, subsample))

    @torch.no_grad()
    def params(self) -> ICAParams:
        """The learned [`ICAParams`][] (detached)."""
        return ICAParams(self.A.detach(), self.mu.detach(), self.sigma2.detach())

    @torch.no_grad()
    def sources(self, x: torch.Tensor) -> torch.Tensor:
        """The guide's mean of the sources for data ``x`` [N, D]: [N, K]."""
        return self.encode(x)[0]

    @torch.no_grad()
    def decode(self, s: torch.Tensor) -> torch.Tensor:
        """The mean ``E[x | s] = A s + mu`` [..., D] for sources ``s`` [..., K]."""
        return s @ self.A.detach().T + self.mu.detach()
