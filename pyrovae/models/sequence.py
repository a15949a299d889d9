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

__all__ = ["masked_sequence", "reverse_within_length", "step_mask", "trim_to_longest"]


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


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row's first ``lengths[n]`` steps reversed, the padding after them left in place.

    ``x`` is ``[N, T]`` or ``[N, T, E]``: a backward RNN reads every sequence from its own last
    step, with no packing, no loop over rows and no host sync (a gather).
    """
    steps = torch.arange(x.shape[1], device=x.device)
    inside = steps < lengths.unsqueeze(-1)
    index = torch.where(inside, lengths.unsqueeze(-1) - 1 - steps, steps)
    if x.dim() == 3:
        index = index.unsqueeze(-1).expand_as(x)
    return x.gather(1, index)


def trim_to_longest(x: torch.Tensor, lengths: torch.Tensor, extra: int = 1) -> torch.Tensor:
    """``x`` [N, T, ...] cut to its first ``min(T, max(lengths) + extra)`` steps.

    A batch of short sequences then costs its own length, not the padded T (with
    [`pyrovae.data.buckets.LengthBuckets`][] batches hold sequences of similar length). It
    reads ``max(lengths)`` on the host; while a CUDA graph is being captured it returns ``x``
    whole, since a captured graph replays one shape for every batch.
    """
    if x.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return x
    if lengths.numel() == 0:
        return x
    return x[:, : min(x.shape[1], int(lengths.max()) + extra)]
