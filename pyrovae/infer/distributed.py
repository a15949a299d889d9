"""Data-parallel training: one process per device, gradients averaged after every backward.

``fit(..., devices=2)`` (or ``num_nodes=...``, or ``fabric=`` a ``lightning.fabric.Fabric``)
launches one process per device through Lightning Fabric's launcher (``Fabric.launch()``: the
running script is started again once per extra device, with the ranks in its environment; under
``torchrun`` or SLURM the processes already exist and Fabric only joins them) and trains with
[`DataParallel`][]:

- every process holds the whole data set and draws the *same* permutation of every epoch (it is
  a function of ``(seed, epoch, stream)``); the global batch of ``world_size * batch_size`` rows
  is cut into ``world_size`` contiguous shards and rank ``r`` takes shard ``r``
  (`BatchPlan`), so each example is seen once per epoch;
- each process's model scales its shard by ``N / M_r`` (global data size over its shard's size)
  in its data plate, so its loss is an unbiased estimate of the full-data loss; its loss is
  weighted by ``world_size * M_r / M`` (1 when the shards are equal) and the flat gradient of
  all parameters (module and Pyro param store) is averaged across processes with one
  ``all_reduce``, which gives every process the gradient of the global batch's estimate
  ``N / M * sum over the global batch`` (see docs/scaling.md);
- parameters are broadcast from rank 0 once at the start; the optimiser steps then keep them
  identical; each rank draws its own random numbers (a seed derived from ``(seed, rank)``);
- rank 0 alone writes checkpoints, logs and shows progress; the epoch's losses are averaged
  across processes, and rank 0's history row (callbacks' metrics, a ``stop``) is broadcast.

Lightning is an optional dependency (``pip install pyrovae[lightning]``) imported only here.
A process group made by the caller (``torch.distributed.init_process_group`` under
``torchrun``) is used as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["DataParallel", "GradientAverage", "global_rank", "launch", "rank_seed"]


def global_rank() -> int:
    """This process's rank in the running process group (0 when there is none).

    Scripts that write results after ``fit`` write them on rank 0 only.
    """
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rank_seed(seed: int, rank: int, step: int | None = None) -> int:
    """The seed of rank ``rank``'s random numbers: ``seed`` on rank 0, a derived one elsewhere.

    With ``step``: the seed of a rank that a resumed run has but its checkpoint had not.
    """
    if rank == 0 and step is None:
        return seed
    entropy = [seed, rank] if step is None else [seed, rank, step]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])  # < 2**32, as NumPy needs


@dataclass
class GradientAverage:
    """Averages the gradients of ``params`` over the process group with one flat ``all_reduce``.

    A parameter without a gradient on some rank counts as a zero gradient there; one without a
    gradient on every rank keeps ``grad=None`` (so Adam skips it, as it would in one process).
    ``seconds`` adds up the wall time of the collective (with a device sync on CUDA) when
    ``timed``, for measuring the communication share of a step.
    """

    world_size: int
    timed: bool = False
    seconds: float = 0.0
    calls: int = 0
    numel: int = field(default=0, init=False)

    def __call__(self, params: Sequence[torch.Tensor]) -> None:
        if not params:
            return
        reference = params[0]
        parts, present = [], []
        for p in params:
            parts.append(p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()))
            present.append(1.0 if p.grad is not None else 0.0)
        flat = torch.cat([*parts, reference.new_tensor(present)])
        self.numel = flat.numel()
        if self.timed:
            _sync(flat.device)
            started = time.perf_counter()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if self.timed:
            _sync(flat.device)
            self.seconds += time.perf_counter() - started
        self.calls += 1
        flat /= self.world_size
        counts = flat[-len(params):]
        offset = 0
        for p, count in zip(params, counts.tolist(), strict=True):
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p) if count > 0 else None
            offset += n


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DataParallel:
    """The process group ``fit`` trains in: rank, world size, device and the collectives."""

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.average = GradientAverage(world_size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def attach(self, step: Any) -> Any:
        """Make ``step`` average its gradients across processes (after backward, before clip)."""
        if not hasattr(step, "reduce_gradients"):
            raise ValueError(
                f"{type(step).__name__} cannot train data-parallel: it has no reduce_gradients"
            )
        step.reduce_gradients = self.average
        return step

    def broadcast_parameters(self, params: Sequence[torch.Tensor]) -> None:
        """Give every process rank 0's parameter values."""
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def mean_(self, values: torch.Tensor) -> torch.Tensor:
        """Average ``values`` across processes in place (every rank calls it)."""
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= self.world_size
        return values

    def from_main(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a picklable object)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._object_device())
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def _object_device(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None

    @contextlib.contextmanager
    def quiet_unless_main(self) -> Iterator[None]:
        """On ranks other than 0, pyrovae logs warnings and errors only while ``fit`` runs."""
        if self.is_main:
            yield
            return
        target = logging.getLogger("pyrovae")
        level = target.level
        target.setLevel(max(target.getEffectiveLevel(), logging.WARNING))
        try:
            yield
        finally:
            target.setLevel(level)


def launch(
    devices: int | None, num_nodes: int, fabric: Any, device: Any
) -> DataParallel | None:
    """The process group for ``fit``'s ``devices``/``num_nodes``/``fabric`` (None: one process).

    Creates and launches a ``Fabric(accelerator, devices, num_nodes, strategy="ddp")`` (gloo on
    CPU, NCCL on CUDA; the accelerator follows ``device``: ``"cuda"`` or the default CPU), or
    launches the ``fabric`` given; reuses a process group that already exists.
    """
    if devices is not None and (isinstance(devices, bool) or int(devices) < 1):
        raise ValueError(f"devices must be a positive integer, got {devices!r}")
    if isinstance(num_nodes, bool) or int(num_nodes) < 1:
        raise ValueError(f"num_nodes must be a positive integer, got {num_nodes!r}")
    wants_many = fabric is not None or (devices or 1) > 1 or num_nodes > 1
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() == 1 and not wants_many:
            return None
        return DataParallel(dist.get_rank(), dist.get_world_size(), _group_device(device))
    if not wants_many:
        return None
    if fabric is None:
        fabric = _make_fabric(devices or 1, num_nodes, device)
    fabric.launch()
    return DataParallel(fabric.global_rank, fabric.world_size, fabric.device)


def _make_fabric(devices: int, num_nodes: int, device: Any) -> Any:
    try:
        from lightning.fabric import Fabric
    except ImportError:
        try:
            from lightning_fabric import Fabric
        except ImportError:
            raise ImportError(
                "data-parallel fit needs Lightning Fabric: pip install 'pyrovae[lightning]'"
            ) from None
    kind = torch.device(device).type if device is not None else "cpu"
    if device is not None and torch.device(device).index is not None:
        raise ValueError(f"give device='cuda' (one process per GPU), not {device!r}, with devices")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"data-parallel fit runs on 'cpu' or 'cuda', not {device!r}")
    return Fabric(accelerator=kind, devices=devices, num_nodes=num_nodes, strategy="ddp")


def _group_device(device: Any) -> torch.device:
    """This process's device in a process group made by the caller (torchrun)."""
    if device is not None and torch.device(device).type == "cuda":
        if torch.device(device).index is not None:
            return torch.device(device)
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu") if device is None else torch.device(device)
