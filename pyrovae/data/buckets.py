"""Length-bucketed minibatches of variable-length sequences for [`fit`][pyrovae.fit].

Sequences are padded to one ``[N, T, ...]`` tensor so that a model can index any minibatch
(``model(*tensors, subsample=idx)``). With uniformly random batches nearly every batch holds
one long sequence, so every step pays for ``T`` recurrent steps even though the average
sequence is much shorter (sheep: 125 points of 251). [`LengthBuckets`][] makes batches of
sequences of similar length instead, and the sequence models cut each batch to its longest
member ([`pyrovae.models.sequence.trim_to_longest`][]); since their likelihoods mask the
steps after each sequence's end, trimming changes no log-probability, only the cost.

How an epoch's batches are made, from a generator seeded by ``(seed, epoch)`` alone (so a run
resumed in mid-epoch sees exactly the batches an uninterrupted one would)::

    shuffle the N indices
    cut them into pools of `pool` batches; sort each pool by length (stable: ties stay shuffled)
    cut each sorted pool into batches of `batch_size`
    shuffle the order of all the batches

Every example is in exactly one batch of an epoch. The pool size trades the batches' spread of
lengths against randomness: a pool of one batch is plain random batching, a pool of the whole
data set a sort by length with only ties shuffled.

Usage::

    from pyrovae.data.buckets import LengthBuckets

    stream = LengthBuckets((x, lengths), lengths, batch_size=100, seed=0)
    fit(SketchRNN(...), stream, batch_size=100, seed=0, ...)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["LengthBuckets", "bucketed_batches"]


def _generator(seed: int, epoch: int) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    # distinct from the seeds of pyrovae.infer.streams's random batches for the same seed
    generator.manual_seed((int(seed) * 1_000_003 + int(epoch)) * 7_919 + 17)
    return generator


def bucketed_batches(
    lengths: Tensor, batch_size: int, seed: int, epoch: int, pool: int = 50
) -> list[Tensor]:
    """One epoch's index batches (CPU LongTensors) of similar-length sequences.

    Args:
        lengths: ``[N]`` length of each sequence (any device; read once on the host).
        batch_size: B; each pool's last batch may be shorter.
        seed: with ``epoch``, the only source of randomness.
        epoch: the epoch (counted from 0); the same (seed, epoch) gives the same batches.
        pool: batches per pool that are sorted by length together (default 50).

    Returns:
        ``ceil`` batches over every pool; their concatenation is a permutation of ``0..N-1``.
    """
    for value, name in [(batch_size, "batch_size"), (pool, "pool")]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    lengths = torch.as_tensor(lengths).detach().cpu()
    if lengths.dim() != 1 or lengths.numel() == 0:
        raise ValueError(f"lengths must be a non-empty 1-d tensor, got shape {list(lengths.shape)}")
    generator = _generator(seed, epoch)
    order = torch.randperm(lengths.numel(), generator=generator)
    batches: list[Tensor] = []
    for chunk in order.split(pool * batch_size):
        by_length = torch.sort(lengths[chunk], stable=True).indices
        batches.extend(chunk[by_length].split(batch_size))
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


class LengthBuckets:
    """A training stream whose batches hold sequences of similar length.

    ``fit`` takes it like any stream (``__len__``, ``for_epoch``) and, because it has
    ``batches(seed, epoch)``, uses its batches instead of random ones; ``fit``'s ``seed`` is
    passed on, so ``fit(..., seed=s)`` fixes the batches of every epoch.

    Args:
        tensors: the model's arguments, each with N rows (e.g. ``(x, lengths)``), or a stream
            with ``__len__`` and ``for_epoch(epoch)`` (e.g.
            [`pyrovae.data.sketch_augment.AugmentedSketches`][]) whose epochs are batched.
        lengths: ``[N]`` the length each sequence is sorted by.
        batch_size: B (``fit``'s ``batch_size`` is not used for this stream).
        pool: batches per sorted pool (default 50, see the module docstring).
    """

    def __init__(
        self, tensors: Sequence[Tensor] | Any, lengths: Tensor, batch_size: int, pool: int = 50
    ) -> None:
        if hasattr(tensors, "for_epoch"):
            self.source, self.tensors = tensors, None
            sizes = {len(tensors)}
        else:
            self.source, self.tensors = None, tuple(tensors)
            sizes = {t.shape[0] for t in self.tensors}
        if len(sizes) != 1 or sizes != {lengths.shape[0]}:
            raise ValueError(
                f"tensors and lengths must have the same number of rows, got {sorted(sizes)} "
                f"and {lengths.shape[0]}"
            )
        self.lengths = lengths.detach().cpu()
        self.batch_size, self.pool = batch_size, pool
        bucketed_batches(self.lengths[:1], batch_size, 0, 0, pool)  # checks the arguments

    def __len__(self) -> int:
        return self.lengths.numel()

    def for_epoch(self, epoch: int) -> tuple[Tensor, ...]:
        return self.tensors if self.source is None else tuple(self.source.for_epoch(epoch))

    def batches(self, seed: int, epoch: int) -> list[Tensor]:
        """Epoch ``epoch``'s index batches, see [`bucketed_batches`][]."""
        return bucketed_batches(self.lengths, self.batch_size, seed, epoch, self.pool)
