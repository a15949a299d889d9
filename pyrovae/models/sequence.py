"""Variable-length sequences in a data plate: step masks and masked per-sequence likelihoods.

A batch of sequences is padded to ``[N, T, ...]`` with ``lengths [N]``. A per-step distribution
of batch shape ``[N, T]`` becomes one per-sequence distribution of batch shape ``[N]`` (for the
data plate) by masking the steps that do not count and summing the rest::

    with data_plate(x, subsample):
        pyro.sample("y", masked_sequence(per_step_dist, step_mask(lengths, T)), obs=y)

The mask is applied with ``torch.where`` (Pyro's ``MaskedDistribution``), so whatever the padding
holds never reaches the log-probability; padding should still be finite where gradients flow
(``where`` passes a zero gradient, and ``0 * inf`` is NaN).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

__all__ = ["masked_sequence", "step_mask"]


def step_mask(lengths: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Boolean ``[N, num_steps]``: ``True`` at steps ``t < lengths[n]``, on ``lengths``' device."""
    steps = torch.arange(num_steps, device=lengths.device)
    return steps < lengths.unsqueeze(-1)


def masked_sequence(step_dist: dist.TorchDistribution, mask: torch.Tensor):
    """``step_dist`` (batch ``[..., N, T]``) scored only where ``mask`` [N, T], summed over T.

    Returns a distribution of batch shape ``[..., N]`` whose ``log_prob`` is
    ``sum_t mask[n, t] * step_dist.log_prob(value)[..., n, t]``.
    """
    return step_dist.mask(mask).to_event(1)
