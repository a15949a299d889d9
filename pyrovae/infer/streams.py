"""Training data as streams of index-sliced minibatches.

A *stream* is one source of arguments for the model and guide: a tensor, a tuple of tensors of
equal length (``(x, y)``), or an object with ``__len__`` and ``for_epoch(epoch) -> tuple`` (such as
[`pyrovae.data.DynamicBinarized`][], which redraws binary images every epoch). The model is
called as ``model(*tensors, subsample=idx)`` on the whole tensors with a LongTensor of row
indices, and selects the rows inside its data plate. Shuffling is a deterministic function of
``(seed, epoch, stream)``, so a resumed run sees the same batches as an uninterrupted one.
NumPy arrays are accepted and converted: floating arrays to the model's floating-point dtype,
integer arrays to int64. A source that also has ``batches(seed, epoch) -> list of LongTensors``
(such as [`pyrovae.data.buckets.LengthBuckets`][], batches of similar-length sequences) chooses
its own index batches; they too must depend only on ``(seed, epoch)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch


class Stream:
    """One data source: its tensors for an epoch, moved to ``device`` once."""

    def __init__(
        self, name: str, source: Any, device: torch.device, float_dtype: torch.dtype | None = None
    ) -> None:
        self.name, self.device, self.float_dtype = name, device, float_dtype
        if hasattr(source, "for_epoch"):
            self._source, self._static = source, None
            self.size = len(source)
        else:
            tensors = source if isinstance(source, (tuple, list)) else (source,)
            self._static = tuple(self._to_device(t) for t in tensors)
            _check_tensors(name, self._static)
            self.size = self._static[0].shape[0]
        if self.size == 0:
            raise ValueError(f"data stream '{name}' is empty")

    def planned_batches(self, seed: int, epoch: int) -> list[torch.Tensor] | None:
        """The source's own index batches for the epoch, on the device; None if it has none."""
        source = getattr(self, "_source", None)
        if source is None or not hasattr(source, "batches"):
            return None
        return [b.to(self.device) for b in source.batches(seed, epoch)]

    def tensors(self, epoch: int) -> tuple[torch.Tensor | None, ...]:
        if self._static is not None:
            return self._static
        tensors = tuple(self._to_device(t) for t in self._source.for_epoch(epoch))
        _check_tensors(self.name, tensors)
        return tensors

    def _to_device(self, t):
        if isinstance(t, np.ndarray):
            t = _from_numpy(t, self.float_dtype)
        return t if not isinstance(t, torch.Tensor) else t.to(self.device, non_blocking=True)


def _from_numpy(array: np.ndarray, float_dtype: torch.dtype | None) -> torch.Tensor:
    if array.dtype.kind == "f":
        return torch.as_tensor(array, dtype=float_dtype or torch.get_default_dtype())
    if array.dtype.kind in "iu":
        return torch.as_tensor(array, dtype=torch.long)
    return torch.as_tensor(array)


def _check_tensors(name: str, tensors: tuple) -> None:
    present = [t for t in tensors if t is not None]
    if not present:
        raise ValueError(f"data stream '{name}' has no tensors")
    for t in present:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"data stream '{name}' holds a {type(t).__name__}, not a tensor")
        if t.dim() == 0:
            raise ValueError(f"data stream '{name}' holds a 0-d tensor; need [N, ...]")
    sizes = {t.shape[0] for t in present}
    if len(sizes) != 1:
        raise ValueError(f"data stream '{name}' has tensors of different lengths {sorted(sizes)}")
    if sizes == {0}:
        raise ValueError(f"data stream '{name}' is empty")
    for t in present:
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"data stream '{name}' contains NaN or inf")


def make_streams(
    data: Any, device: torch.device, float_dtype: torch.dtype | None = None
) -> list[Stream]:
    """Streams from ``data``: one source, or a mapping of name to source (one batch each a step).

    ``float_dtype`` is the dtype for floating-point NumPy arrays (default: torch's default).
    """
    if isinstance(data, Mapping):
        if not data:
            raise ValueError("data is an empty mapping")
        return [Stream(str(name), source, device, float_dtype) for name, source in data.items()]
    return [Stream("data", data, device, float_dtype)]


def resolve_device(device: Any, data: Any) -> torch.device:
    """``device`` checked, or where the first tensor in ``data`` lives (CPU if none)."""
    if device is None:
        for t in _first_tensors(data):
            return t.device
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device}")
    return device


def _first_tensors(data: Any) -> Iterator[torch.Tensor]:
    sources = data.values() if isinstance(data, Mapping) else [data]
    for source in sources:
        tensors = source if isinstance(source, (tuple, list)) else (getattr(source, "x", source),)
        for t in tensors:
            if isinstance(t, torch.Tensor):
                yield t


def _generator(seed: int, epoch: int, stream: int, cycle: int) -> torch.Generator:
    # Distinct, reproducible permutations for every (seed, epoch, stream, cycle).
    gen = torch.Generator(device="cpu")
    gen.manual_seed(((seed * 1_000_003 + epoch) * 1_009 + stream) * 10_007 + cycle)
    return gen


class BatchPlan:
    """The index batches of one epoch for every stream.

    The largest stream sets the number of steps: ``ceil(N / B)`` (``floor`` with ``drop_last``),
    or the number of its own batches if its source plans them (``batches(seed, epoch)``, which
    ``drop_last`` and ``B`` do not change; a smaller stream's planned batches are cycled).
    Smaller streams cycle through fresh permutations as often as needed, with batch size
    ``min(B, N_stream)``, so 100 labelled images pair with any number of unlabelled batches.

    With ``scheme="alternating"`` every step takes a batch of one stream only (Pyro's SS-VAE
    example; the others get an empty index batch, which the step skips): each stream goes
    through one permutation in ``ceil(N_s / B_s)`` batches (planned ones as they come), and the
    epoch's ``S = sum_s ceil(N_s / B_s)`` steps spread each stream's batches evenly over it.
    Step ``k``'s loss weight is then ``S * M / N_s`` on its stream's N/M-scaled loss, so each
    step is still an unbiased estimate of the whole objective and an epoch's gradients add up
    to every stream's objective with weight 1. (Without the weight a labelled stream of 3000
    images would count 3000/47000 as much as it should beside 47000 unlabelled ones.)

    With ``world_size > 1`` the batches above are the *global* ones (every rank computes the
    same plan) and `step` gives rank ``rank``'s contiguous shard of each (sizes differ by
    at most one row); `weights` gives each shard's loss weight ``world_size * M_r / M``.
    """

    def __init__(
        self,
        streams: list[Stream],
        batch_sizes: list[int],
        seed: int,
        epoch: int,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
        scheme: str = "joint",
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        self.rank, self.world_size = rank, world_size
        self.step_weights: list[float] | None = None
        if scheme == "alternating":
            self._alternate(streams, batch_sizes, seed, epoch, drop_last)
            return
        main = max(range(len(streams)), key=lambda i: streams[i].size)
        n, b = streams[main].size, batch_sizes[main]
        planned = [s.planned_batches(seed, epoch) for s in streams]
        self.num_steps = n // b if drop_last and n >= b else -(-n // b)
        if planned[main] is not None:
            self.num_steps = len(planned[main])
        self.batches: list[list[torch.Tensor]] = []
        for i, (stream, size) in enumerate(zip(streams, batch_sizes, strict=True)):
            own = planned[i]
            if own is not None:
                self.batches.append([own[k % len(own)] for k in range(self.num_steps)])
                continue
            size = min(size, stream.size)
            needed = self.num_steps * size
            cycles = -(-needed // stream.size)
            perm = torch.cat(
                [
                    torch.randperm(stream.size, generator=_generator(seed, epoch, i, c))
                    for c in range(cycles)
                ]
            ).to(stream.device)
            if i == main and not drop_last:
                chunks = list(perm[:n].split(size))
            else:
                chunks = list(perm[:needed].split(size))
            self.batches.append(chunks)

    def _alternate(
        self, streams: list[Stream], batch_sizes: list[int], seed: int, epoch: int,
        drop_last: bool,
    ) -> None:
        own_batches = []
        for i, (stream, size) in enumerate(zip(streams, batch_sizes, strict=True)):
            own = stream.planned_batches(seed, epoch)
            if own is None:
                size = min(size, stream.size)
                perm = torch.randperm(stream.size, generator=_generator(seed, epoch, i, 0))
                own = list(perm.to(stream.device).split(size))
                if drop_last and len(own) > 1 and own[-1].numel() < size:
                    own = own[:-1]
            own_batches.append(own)
        # Batch j of a stream with n batches sits at (j + 1/2) / n of the epoch: evenly spread.
        order = sorted(
            ((j + 0.5) / len(own), i, j)
            for i, own in enumerate(own_batches)
            for j in range(len(own))
        )
        self.num_steps = len(order)
        empty = [torch.zeros(0, dtype=torch.long, device=s.device) for s in streams]
        self.batches = [[] for _ in streams]
        self.step_weights = []
        for _, i, j in order:
            for s in range(len(streams)):
                self.batches[s].append(own_batches[i][j] if s == i else empty[s])
            self.step_weights.append(self.num_steps * own_batches[i][j].numel() / streams[i].size)

    def step(self, k: int) -> list[torch.Tensor]:
        """Step ``k``'s index batch of every stream (this rank's shard of it)."""
        if self.world_size == 1:
            return [chunks[k] for chunks in self.batches]
        return [chunks[k].tensor_split(self.world_size)[self.rank] for chunks in self.batches]

    def weights(self, k: int) -> list[float]:
        """Each stream's loss weight at step ``k``: ``world_size * M_r / M`` (1: equal shards),
        times the alternating scheme's weight of the step."""
        shards = self.step(k)
        scheme = 1.0 if self.step_weights is None else self.step_weights[k]
        return [
            scheme * self.world_size * shard.numel() / chunks[k].numel() if chunks[k].numel()
            else 1.0
            for shard, chunks in zip(shards, self.batches, strict=True)
        ]

