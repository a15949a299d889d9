"""Missing-pixel imputation with a trained latent-variable model, by posterior inference.

Given images ``x`` [N, D] of which only the pixels in a boolean mask ``observed`` are seen, the
target is the conditional ``p(x_mis | x_obs) = int p(x_mis | z) p(z | x_obs) dz`` of the model
``z ~ p(z), x | z ~ prod_d p(x_d | z)``. Three samplers, all vectorised over images and chains
(Python loops only over sweeps or chunks of samples), all reading densities from traces of the
model and guide with the missing pixels masked out of the likelihood
(`pyrovae.infer._conditioning.ObservedSite`):

* ``"pseudo_gibbs"`` (Rezende et al. 2014): alternate ``z ~ q(z | x_obs, x_mis)`` and
  ``x_mis ~ p(x_mis | z)``. A Markov chain whose stationary law is the target only when the guide
  is the exact posterior ``q(z | x) = p(z | x)`` (then it *is* the Gibbs sampler of
  ``p(z, x_mis | x_obs)``, as for PPCA with `PPCA.set_guide_to_posterior`); with an
  amortised approximation it is biased by the guide's error.
* ``"metropolis_gibbs"`` (Mattei & Frellsen 2018): the same alternation, with the z-step an
  independence Metropolis-Hastings step that proposes ``z' ~ q(z | x~)`` (x~ = observed and current
  imputed pixels) and accepts with probability
  ``min(1, p(x~ | z') p(z') q(z | x~) / (p(x~ | z) p(z) q(z' | x~)))``: a Gibbs sampler of
  ``p(z, x_mis | x_obs)`` for any guide that covers the posterior.
* ``"importance"`` (Mattei & Frellsen 2019, MIWAE's imputation): self-normalised weights
  ``w_s ∝ p(x_obs | z_s) p(z_s) / r(z_s)`` and ``E[x_mis | x_obs] ≈ sum_s w_s E[x_mis | z_s]``,
  consistent for any proposal ``r`` that covers ``p(z | x_obs)``. MIWAE's proposal is the guide
  at the image with its missing pixels set to 0; a guide trained on complete images then
  proposes from the posterior of a *different* image, narrower than ``p(z | x_obs)`` (which
  averages ``p(z | x_obs, x_mis)`` over the missing values), and the weights degenerate (seen on
  PPCA). Here ``r(z) = (1/R) sum_r q(z | x~_r)`` is the mixture of the guide at R completions
  ``x~_r`` (the states of R short pseudo-Gibbs chains, held fixed) and of the prior (a
  defensive component, Hesterberg 1995, which bounds the weights by ``(R + 1) p(x_obs | z)``):
  since
  ``p(z | x_obs) = E_{x_mis | x_obs}[p(z | x_obs, x_mis)]``, this mixture tends to the target when
  the guide is exact and the completions are draws of ``p(x_mis | x_obs)``. Each sample is drawn
  from the components in turn (a deterministic mixture, weighted by the full mixture density:
  unbiased, Veach & Guibas' balance heuristic).

Each returns an [`Imputation`][]: the latent samples ``z`` with their normalised weights
(uniform for the chains), from which every conditional moment follows (the mixture
``sum_s w_s p(x_mis | z_s)``), and the imputed images (the conditional mean, observed pixels
kept). [`missing_log_likelihood`][] scores true missing values under that mixture.

References:
    D. J. Rezende, S. Mohamed and D. Wierstra. Stochastic backpropagation and approximate
    inference in deep generative models. ICML 2014 (Section 6, imputation).
    P.-A. Mattei and J. Frellsen. Leveraging the exact likelihood of deep latent variable models.
    NeurIPS 2018.
    P.-A. Mattei and J. Frellsen. MIWAE: deep generative modelling and imputation of incomplete
    data sets. ICML 2019.
    T. Hesterberg. Weighted average importance sampling and defensive mixture distributions.
    Technometrics 37(2), 1995.
    E. Veach and L. J. Guibas. Optimally combining sampling techniques for Monte Carlo
    rendering. SIGGRAPH 1995.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._conditioning import SITES, pixel_mask, run_pass
from .scope import param_scope

METHODS = ("pseudo_gibbs", "metropolis_gibbs", "importance")
#: The missing-pixel patterns of [`make_mask`][]: the top or bottom half of the rows, or a
#: random 50 % or 80 % of the pixels (any ``"randomNN"``, NN percent, is accepted).
PATTERNS = ("top", "bottom", "random50", "random80")


def make_mask(pattern: str, n: int, side: int = 28, seed: int = 0) -> torch.Tensor:
    """The observation mask of ``n`` square images ``side`` x ``side`` for a missing ``pattern``.

    Args:
        pattern: ``"top"`` (the top ``side // 2`` rows missing), ``"bottom"`` (the other rows
            missing) or ``"randomNN"`` (each pixel missing independently with probability
            NN / 100, e.g. ``"random50"``, ``"random80"``).
        n: number of images.
        side: image height = width (28 for MNIST, 8 for digits).
        seed: seed of the random patterns (a private generator; the global one is untouched).

    Returns:
        bool [n, side * side] on the CPU, True where a pixel is observed (row-major pixels, as
        the flattened images). The halves are the same for every image; the random patterns
        differ per image.

    Raises:
        ValueError: an unknown ``pattern``.
    """
    d = side * side
    if pattern in ("top", "bottom"):
        rows = torch.arange(d) // side
        missing = rows < side // 2 if pattern == "top" else rows >= side // 2
        return (~missing).expand(n, d).clone()
    if pattern.startswith("random"):
        frac = int(pattern[len("random"):]) / 100.0
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(n, d, generator=gen) >= frac
    raise ValueError(f"unknown pattern {pattern!r}; choose from {PATTERNS}")


@dataclass
class Imputation:
    """What [`impute`][] returns.

    Attributes:
        method: the sampler's name.
        mean: [N, D] imputed images: ``E[x_mis | x_obs]`` at the missing pixels (under the
            sampler's approximation), the observed values elsewhere.
        z: [S, N, K] latent samples. For the chains, sweep-major: ``z.view(T, C, N, K)`` with T
            kept sweeps and C chains.
        log_weights: [S, N] normalised log-weights (``logsumexp`` over S is 0); uniform
            ``-log S`` for the chains.
        observed: [N, D] the observation mask.
        num_chains: C (1 for importance sampling).
        acceptance_rate: mean Metropolis acceptance over kept sweeps, chains and images
            (``"metropolis_gibbs"`` only, else None).
        log_evidence: [N] the importance-sampled ``log p(x_obs)`` (``"importance"`` only).
    """

    method: str
    mean: torch.Tensor
    z: torch.Tensor
    log_weights: torch.Tensor
    observed: torch.Tensor
    num_chains: int = 1
    acceptance_rate: float | None = None
    log_evidence: torch.Tensor | None = None

    @property
    def effective_sample_size(self) -> torch.Tensor:
        """``1 / sum_s w_s^2`` per image [N] (S for the chains, ignoring autocorrelation)."""
        return 1.0 / (2.0 * self.log_weights).exp().sum(0)


def _check(x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError("x must be a floating-point tensor [N, D]")
    return pixel_mask(observed, x)


def _prior_fill(module, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """``x`` with its missing pixels drawn from the prior predictive ``p(x_mis)``."""
    draw = run_pass(module, x, num_particles=1, use_guide=False).clean.sample()[0]
    return torch.where(observed, x, draw)


def _chains(module, x, observed, num_sweeps, burn_in, num_chains, metropolis, warmup=0):
    """Pseudo-Gibbs or Metropolis-within-Gibbs on ``num_chains`` copies of every image."""
    n = x.shape[0]
    xs = x.repeat(num_chains, 1)  # rows: chain-major [C * N, D]
    obs = observed.repeat(num_chains, 1)
    current = _prior_fill(module, xs, obs)
    z = None
    kept_z, mean_sum, accepted, kept = [], torch.zeros_like(xs), 0.0, 0
    for sweep in range(num_sweeps):
        proposal = run_pass(module, current, num_particles=1)  # z' ~ q(z | x~), full x~
        if metropolis and z is not None and sweep >= warmup:
            stay = run_pass(module, current, num_particles=1, z=z[None])
            log_ratio = (proposal.log_weight - stay.log_weight)[0]
            u = torch.rand_like(log_ratio)
            accept = torch.log(u) < log_ratio
            z = torch.where(accept[:, None], proposal.z[0], z)
            col = accept[:, None]
            draw = torch.where(col, proposal.clean.sample()[0], stay.clean.sample()[0])
            component_mean = torch.where(col, proposal.clean.mean[0], stay.clean.mean[0])
            rate = accept.float().mean()
        else:
            z = proposal.z[0]
            draw, component_mean, rate = proposal.clean.sample()[0], proposal.clean.mean[0], 1.0
        current = torch.where(obs, xs, draw)
        if sweep >= burn_in:
            kept_z.append(z.view(num_chains, n, -1))
            mean_sum += component_mean
            accepted, kept = accepted + float(rate), kept + 1
    if kept == 0:
        raise ValueError(f"burn_in ({burn_in}) must be below num_sweeps ({num_sweeps})")
    z_all = torch.stack(kept_z).reshape(kept * num_chains, n, -1)
    mean = (mean_sum / kept).view(num_chains, n, -1).mean(0)
    log_weights = z_all.new_full(z_all.shape[:2], -math.log(z_all.shape[0]))
    return z_all, log_weights, mean, (accepted / kept if metropolis else None)


def _log_proposal(module, fills: torch.Tensor, z: torch.Tensor, log_prior: torch.Tensor):
    """``log r(z)``, r = (q(z | fills[1]) + ... + q(z | fills[R]) + p(z)) / (R + 1): [S, N].

    ``fills`` [R, N, D]; ``z`` [S, N, K]; ``log_prior`` = log p(z) [S, N].
    """
    parts = [run_pass(module, fill, num_particles=z.shape[0], z=z, use_model=False).log_guide
             for fill in fills]
    return torch.logsumexp(torch.stack([*parts, log_prior]), 0) - math.log(len(parts) + 1)


def _importance(module, x, observed, num_samples, sample_chunk, num_fills, fill_sweeps):
    n = x.shape[0]
    obs = observed.repeat(num_fills, 1)
    fills = _prior_fill(module, x.repeat(num_fills, 1), obs)
    for _ in range(fill_sweeps):  # pseudo-Gibbs: fills ~ roughly p(x_mis | x_obs)
        draw = run_pass(module, fills, num_particles=1).clean.sample()[0]
        fills = torch.where(obs, fills, draw)
    zs, log_ws = [], []
    log_norm = x.new_full((n,), -math.inf)
    acc = torch.zeros_like(x)
    per_pass = max(1, sample_chunk // (num_fills + 1))
    done = 0
    while done < num_samples:
        m = min(per_pass, -(-(num_samples - done) // (num_fills + 1)))
        # m draws from each of the R components q(z | fills[r]) and from the prior
        z = run_pass(module, fills, num_particles=m, use_model=False).z
        z = z.reshape(m * num_fills, n, -1)
        z_prior = run_pass(module, x, num_particles=m, use_guide=False).z
        z = torch.cat([z, z_prior])[: num_samples - done]
        p = run_pass(module, x, num_particles=z.shape[0], mask=observed, z=z, use_guide=False)
        log_r = _log_proposal(module, fills.view(num_fills, n, -1), z, p.log_prior)
        log_w = p.log_joint - log_r
        new_norm = torch.logaddexp(log_norm, torch.logsumexp(log_w, 0))
        acc = acc * (log_norm - new_norm).exp()[:, None] + (
            (log_w - new_norm).exp()[..., None] * p.clean.mean).sum(0)
        log_norm = new_norm
        zs.append(z)
        log_ws.append(log_w)
        done += z.shape[0]
    log_w = torch.cat(log_ws)
    return torch.cat(zs), log_w - log_norm, acc, log_norm - math.log(num_samples)


@torch.no_grad()
def impute(
    module,
    x: torch.Tensor,
    observed: torch.Tensor,
    method: str = "importance",
    *,
    num_samples: int = 1000,
    num_sweeps: int = 200,
    burn_in: int | None = None,
    num_chains: int = 1,
    sample_chunk: int = 100,
    num_fills: int = 10,
    fill_sweeps: int = 10,
    pseudo_gibbs_warmup: int = 0,
) -> Imputation:
    """Impute the missing pixels of ``x`` by posterior inference in ``module``.

    Args:
        module: a trained model with ``.model(x)`` and ``.guide(x)`` whose data site ``"x"`` is a
            ``.to_event(1)`` distribution over pixels and latent site ``"z"`` (any pyrovae VAE
            from [`pyrovae.load_checkpoint`][], or [`pyrovae.models.PPCA`][]).
        x: [N, D] images; only the pixels where ``observed`` is True are read (the others may
            hold any value in the likelihood's support, e.g. 0).
        observed: bool [N, D], True where a pixel is observed.
        method: ``"importance"`` (default), ``"metropolis_gibbs"`` or ``"pseudo_gibbs"``.
        num_samples: importance samples per image (``"importance"``; default 1000).
        num_sweeps: sweeps of each chain (chains; default 200).
        burn_in: sweeps discarded at the start (chains; default ``num_sweeps // 2``).
        num_chains: independent chains per image (chains; default 1).
        sample_chunk: importance samples per vectorised pass (default 100): memory is
            O(sample_chunk x N x D).
        num_fills: R, the proposal's mixture components for ``"importance"`` (default 10).
        fill_sweeps: pseudo-Gibbs sweeps that make the R fills (default 10; 0: prior draws).
        pseudo_gibbs_warmup: for ``"metropolis_gibbs"``, make the first sweeps pseudo-Gibbs
            sweeps (default 0): a starting point for the chain that leaves its target unchanged.
            Keep it well below ``burn_in``: the Metropolis sweeps after it must forget the
            pseudo-Gibbs bias (on the PPCA test, 10 of them were not enough, 50 were).

    The random draws use torch's global generator (seed it with ``pyro.set_rng_seed``). The
    module runs in eval mode, in a fresh param scope, without gradients.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    for name, value in (("num_samples", num_samples), ("num_sweeps", num_sweeps),
                        ("num_chains", num_chains), ("sample_chunk", sample_chunk),
                        ("num_fills", num_fills)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    observed = _check(x, observed)
    burn_in = num_sweeps // 2 if burn_in is None else burn_in
    was_training = module.training
    module.eval()
    try:
        with param_scope(module):
            if method == "importance":
                z, log_w, mean, log_evidence = _importance(
                    module, x, observed, num_samples, sample_chunk, num_fills, fill_sweeps)
                return Imputation(method, torch.where(observed, x, mean), z, log_w, observed,
                                  log_evidence=log_evidence)
            z, log_w, mean, rate = _chains(module, x, observed, num_sweeps, burn_in, num_chains,
                                           metropolis=method == "metropolis_gibbs",
                                           warmup=pseudo_gibbs_warmup)
            return Imputation(method, torch.where(observed, x, mean), z, log_w, observed,
                              num_chains=num_chains, acceptance_rate=rate)
    finally:
        module.train(was_training)


@torch.no_grad()
def missing_log_likelihood(
    module, imputation: Imputation, x_true: torch.Tensor, sample_chunk: int = 100
) -> torch.Tensor:
    """``log sum_s w_s p(x_mis | z_s)`` per image [N]: the true missing pixels' log-likelihood.

    The log-density (nats) of the true values ``x_true`` [N, D] at the missing pixels under the
    imputation's predictive mixture. For ``"importance"`` it estimates ``log p(x_mis | x_obs)``
    (a ratio of two importance estimates, consistent as S grows); for the chains it is the
    Rao-Blackwellised predictive of the kept samples.
    """
    missing = ~pixel_mask(imputation.observed, x_true)
    was_training = module.training
    module.eval()
    total = x_true.new_full((x_true.shape[0],), -math.inf)
    try:
        with param_scope(module):
            for start in range(0, imputation.z.shape[0], sample_chunk):
                z = imputation.z[start:start + sample_chunk]
                p = run_pass(module, x_true, num_particles=z.shape[0], mask=missing, z=z,
                             use_guide=False)
                log_w = imputation.log_weights[start:start + sample_chunk]
                total = torch.logaddexp(total, torch.logsumexp(log_w + p.log_lik, 0))
    finally:
        module.train(was_training)
    return total


def nuts_impute(
    module,
    x: torch.Tensor,
    observed: torch.Tensor,
    *,
    num_samples: int = 500,
    warmup_steps: int = 200,
) -> Imputation:
    """NUTS on ``z`` targeting ``p(z | x_obs)`` exactly (the missing pixels masked out).

    A reference sampler that needs no guide, for a few images (its cost grows with N, as one
    chain runs over the N images' latents jointly): Pyro's ``NUTS`` on the model with the
    observation mask, then ``E[x_mis | x_obs]`` is the mean of ``E[x_mis | z_s]`` over the
    draws. Arguments as [`impute`][]; ``warmup_steps`` adapt the step size and mass matrix.
    """
    from pyro.infer import MCMC, NUTS

    from ._conditioning import ObservedSite

    observed = _check(x, observed)
    x_in = torch.where(observed, x, torch.zeros_like(x))
    was_training = module.training
    module.eval()
    try:
        with param_scope(module):
            masked = ObservedSite(observed, site=SITES.observed)(module.model)
            mcmc = MCMC(NUTS(masked, max_plate_nesting=1), num_samples=num_samples,
                        warmup_steps=warmup_steps, disable_progbar=True)
            mcmc.run(x_in)
            z = mcmc.get_samples()[SITES.latent].detach()  # [S, N, K]
            with torch.no_grad():
                clean = run_pass(module, x_in, num_particles=z.shape[0], z=z,
                                 use_guide=False).clean
                mean = clean.mean.mean(0)
    finally:
        module.train(was_training)
    log_weights = z.new_full(z.shape[:2], -math.log(z.shape[0]))
    return Imputation("nuts", torch.where(observed, x, mean), z, log_weights, observed)


__all__ = ["METHODS", "SITES", "Imputation", "impute", "missing_log_likelihood", "nuts_impute"]
