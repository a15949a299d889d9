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
import pickle
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DataParallel", "GradientAverage", "global_rank", "launch", "main_first", "rank_seed",
    "start_processes",
]


def global_rank() -> int:
    """This process's rank in the running process group (0 when there is none).

    Scripts that write results after ``fit`` write them on rank 0 only.
    """
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def start_processes(devices: int = 1, num_nodes: int = 1, device: Any = None) -> int:
    """Launch (or join) a script's data-parallel processes before it does anything; its rank.

    ``fit(..., devices=, num_nodes=)`` launches the processes itself, when it is called. A
    script that makes folders or writes files before ``fit`` calls this first instead: the
    script is started again once per extra device at this call (as at ``fit``'s), and from
    then on [`global_rank`][pyrovae.infer.distributed.global_rank] tells every process whether
    it is rank 0; a later ``fit`` trains in this group. With ``devices * num_nodes == 1`` it
    does nothing and returns 0.

    Args:
        devices: processes per node (default 1).
        num_nodes: machines (default 1).
        device: ``"cuda"`` (one GPU per process, NCCL) or the default CPU (gloo).
    """
    launch(devices, num_nodes, None, device)
    return global_rank()


def main_first(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on rank 0 only; its result (picklable) on every rank.

    For a script's writes around ``fit`` (making a run folder, moving an old one aside): the
    other ranks wait for rank 0 and get its result. When ``fn`` raises, every rank raises: the
    exception itself (from rank 0, pickled), except that a ``SystemExit`` carrying a message
    becomes a bare ``SystemExit(1)`` on the other ranks, so the message is printed once.
    Without a process group it is ``fn(*args, **kwargs)``.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return fn(*args, **kwargs)
    outcome: list[Any] = [None, None]
    raised = None
    if dist.get_rank() == 0:
        try:
            outcome[0] = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - re-raised on every rank below
            raised = outcome[1] = err
            try:  # what cannot be sent would leave the other ranks waiting
                pickle.dumps(err)
            except Exception:  # noqa: BLE001
                outcome[1] = RuntimeError(f"{type(err).__name__}: {err}")
    device = None
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    dist.broadcast_object_list(outcome, src=0, device=device)
    result, err = outcome
    if raised is not None:
        raise raised
    if err is None:
        return result
    if dist.get_rank() != 0 and isinstance(err, SystemExit) and not isinstance(err.code, int):
        raise SystemExit(1)
    raise err


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

    Which parameters take part is settled once, on the first call: those with a gradient on
    some rank (one exchange of per-parameter flags, read on the host). Every later call reads
    nothing back to the host, so it can run between CUDA graph replays or inside a step whose
    loss never syncs:

    - a parameter of that set without a gradient on some rank counts as a zero gradient there
      (and gets one, filled in place into a buffer kept for it, so its address never changes);
    - a parameter outside it (no rank had a gradient on the first call) keeps ``grad=None``, as
      Adam expects of an unused parameter; should it get a gradient later, that gradient is
      dropped on every rank (so the ranks stay equal) and a warning names it: a model whose
      set of trained parameters grows after the first step cannot train data-parallel.

    In one process ``fit`` would skip a parameter in a step where it has no gradient; here, a
    parameter of the set that no rank touches in a later step is stepped with a zero gradient
    (Adam's moments decay). pyrovae's models use every parameter in every step.

    The averaged gradients are written into the existing ``.grad`` tensors (whose addresses a
    captured optimiser step has recorded). ``seconds`` adds up the
    wall time of the collective (with a device sync on CUDA) when ``timed``, for measuring the
    communication share of a step; ``numel`` is the size of the last buffer sent.
    """

    world_size: int
    timed: bool = False
    seconds: float = 0.0
    calls: int = 0
    numel: int = field(default=0, init=False)
    members: list[bool] | None = field(default=None, init=False)
    _fill: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False)
    _warned: set[int] = field(default_factory=set, init=False, repr=False)

    def __call__(self, params: Sequence[torch.Tensor]) -> None:
        if not params:
            return
        if self.members is None or len(self.members) != len(params):
            self.members = self._discover(params)
        chosen = [p for p, keep in zip(params, self.members, strict=True) if keep]
        for i, (p, keep) in enumerate(zip(params, self.members, strict=True)):
            if not keep and p.grad is not None:
                if i not in self._warned:
                    self._warned.add(i)
                    warnings.warn(
                        f"parameter {i} {tuple(p.shape)} got a gradient after the first step; "
                        "data-parallel training averages only the parameters with a gradient "
                        "on the first step, so this one is dropped (not trained)",
                        RuntimeWarning, stacklevel=3,
                    )
                p.grad = None
        if not chosen:
            return
        parts = [
            p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in chosen
        ]
        flat = torch.cat(parts)
        self._all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in chosen:
            n = p.numel()
            averaged = flat[offset : offset + n].view_as(p)
            offset += n
            if p.grad is None:  # no gradient on this rank: a buffer of its own, reused
                fill = self._fill.get(id(p))
                if fill is None or fill.shape != p.shape:
                    fill = self._fill[id(p)] = torch.empty_like(p)
                p.grad = fill.copy_(averaged)
            else:
                p.grad.copy_(averaged)

    def _discover(self, params: Sequence[torch.Tensor]) -> list[bool]:
        """Which parameters have a gradient on some rank (the one host read of the flags)."""
        flags = params[0].new_tensor(
            [0.0 if p.grad is None else 1.0 for p in params], dtype=torch.float32
        )
        dist.all_reduce(flags, op=dist.ReduceOp.SUM)
        return [count > 0 for count in flags.tolist()]

    def _all_reduce(self, flat: torch.Tensor) -> None:
        self.numel = flat.numel()
        if self.timed:
            _sync(flat.device)
            started = time.perf_counter()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if self.timed:
            _sync(flat.device)
            self.seconds += time.perf_counter() - started
        self.calls += 1


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

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        dist.barrier()

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
