"""Denoising with a trained latent-variable model: the posterior mean of clean images.

The data ``y`` is a noisy copy of an image ``x`` from the model, with a known noise model:

* Bernoulli likelihoods, salt-and-pepper noise: each pixel is flipped independently with
  probability ``flip_prob`` = e. Given ``z`` the noisy pixel is a two-component mixture,
  ``p(y_d | z) = (1 - e) Bern(y_d; p_d) + e Bern(1 - y_d; p_d) = Bern(y_d; e + (1 - 2e) p_d)``
  with ``p_d = P(x_d = 1 | z)``, and by Bayes
  ``P(x_d = 1 | y_d, z) = p_d l_1 / (p_d l_1 + (1 - p_d) l_0)`` with ``l_1 = P(y_d | x_d = 1)``.
* Gaussian likelihoods ``x_d | z ~ N(m_d, s_d^2)``, additive noise ``y = x + N(0, t^2 I)``:
  ``y_d | z ~ N(m_d, s_d^2 + t^2)`` and
  ``E[x_d | y_d, z] = m_d + s_d^2 / (s_d^2 + t^2) (y_d - m_d)``.

Then ``E[x | y] = sum_s w_s E[x | y, z_s]`` with ``z_s ~ q(z | y)`` (the guide at the noisy
image) and self-normalised weights ``w_s ∝ p(y | z_s) p(z_s) / q(z_s | y)``, the noisy
likelihood read from the model's trace with its data site's distribution replaced by the noisy
one (`pyrovae.infer._conditioning.ObservedSite`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro.distributions as dist
import torch

from ._conditioning import run_pass
from .scope import param_scope


@dataclass
class Denoised:
    """What [`denoise`][] returns: ``mean`` [N, D] = E[x | y], ``log_evidence`` [N] = the
    importance-sampled ``log p(y)``, ``effective_sample_size`` [N] = ``1 / sum_s w_s^2``."""

    mean: torch.Tensor
    log_evidence: torch.Tensor
    effective_sample_size: torch.Tensor


def _noise_model(flip_prob: float | None, noise_scale: float | None):
    """``(transform, clean_mean)``: the noisy per-pixel distribution and E[x | y, z]."""
    if (flip_prob is None) == (noise_scale is None):
        raise ValueError("give exactly one of flip_prob (Bernoulli) and noise_scale (Gaussian)")
    if flip_prob is not None:
        if not 0.0 <= flip_prob < 0.5:
            raise ValueError(f"flip_prob must lie in [0, 0.5), got {flip_prob}")
        e = float(flip_prob)

        def transform(base):
            if not isinstance(base, torch.distributions.Bernoulli):
                raise ValueError("flip_prob needs a Bernoulli likelihood")
            return dist.Bernoulli(probs=e + (1.0 - 2.0 * e) * base.probs)

        def clean_mean(base, y):
            p = base.probs
            l1 = torch.where(y > 0.5, 1.0 - e, e)  # P(y | x = 1)
            return p * l1 / (p * l1 + (1.0 - p) * (1.0 - l1))

        return transform, clean_mean
    if not noise_scale > 0:
        raise ValueError(f"noise_scale must be positive, got {noise_scale}")
    t2 = float(noise_scale) ** 2

    def transform(base):
        if not isinstance(base, torch.distributions.Normal):
            raise ValueError("noise_scale needs a Gaussian likelihood")
        return dist.Normal(base.loc, (base.scale**2 + t2).sqrt())

    def clean_mean(base, y):
        s2 = base.scale**2
        return base.loc + s2 / (s2 + t2) * (y - base.loc)

    return transform, clean_mean


@torch.no_grad()
def denoise(
    module,
    y: torch.Tensor,
    *,
    flip_prob: float | None = None,
    noise_scale: float | None = None,
    num_samples: int = 1000,
    sample_chunk: int = 100,
) -> Denoised:
    """The posterior mean ``E[x | y]`` of clean images given noisy ones, by importance sampling.

    Args:
        module: a trained model with ``.model(x)``/``.guide(x)`` (see [`pyrovae.infer.impute`][]).
        y: [N, D] noisy images (binary for ``flip_prob``).
        flip_prob: the salt-and-pepper flip probability e in [0, 0.5) (Bernoulli likelihoods).
        noise_scale: the standard deviation t of additive Gaussian noise (Gaussian likelihoods).
        num_samples: importance samples per image (default 1000), drawn from the guide at ``y``
            in chunks of ``sample_chunk`` (default 100).
    """
    transform, clean_mean = _noise_model(flip_prob, noise_scale)
    if num_samples < 1 or sample_chunk < 1:
        raise ValueError("num_samples and sample_chunk must be positive")
    was_training = module.training
    module.eval()
    log_norm = y.new_full((y.shape[0],), -math.inf)
    log_sq = y.new_full((y.shape[0],), -math.inf)
    acc = torch.zeros_like(y)
    try:
        with param_scope(module):
            for start in range(0, num_samples, sample_chunk):
                k = min(sample_chunk, num_samples - start)
                p = run_pass(module, y, num_particles=k, transform=transform)
                log_w = p.log_weight
                new_norm = torch.logaddexp(log_norm, torch.logsumexp(log_w, 0))
                acc = acc * (log_norm - new_norm).exp()[:, None] + (
                    (log_w - new_norm).exp()[..., None] * clean_mean(p.clean, y)).sum(0)
                log_norm = new_norm
                log_sq = torch.logaddexp(log_sq, torch.logsumexp(2 * log_w, 0))
    finally:
        module.train(was_training)
    ess = (2 * log_norm - log_sq).exp()
    return Denoised(acc, log_norm - math.log(num_samples), ess)
