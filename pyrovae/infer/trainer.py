"""``fit``: stochastic variational inference for any model/guide pair.

The loop is plain PyTorch around Pyro's objectives: each step draws one index batch from every
data stream, adds up ``objective.differentiable_loss(model, guide, *tensors, subsample=idx)``
over the streams (each already scaled by N/M by the model's data plate), and takes one optimiser
step. Losses stay on the device; the host looks at them only every ``sync_every`` steps and at
checkpoints, which is when a NaN or inf is caught.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch

from .callbacks import EpochEnd, History
from .checkpoint import read_checkpoint, rng_state, save_checkpoint, set_rng_state
from .objectives import make_objective
from .scope import param_scope
from .streams import BatchPlan, make_streams

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the message names the epoch and step."""


def _resolve_device(device: Any, streams_data: Any) -> torch.device:
    if device is None:
        for t in _first_tensors(streams_data):
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


def _first_tensors(data: Any):
    sources = data.values() if isinstance(data, Mapping) else [data]
    for source in sources:
        tensors = source if isinstance(source, (tuple, list)) else (getattr(source, "x", source),)
        for t in tensors:
            if isinstance(t, torch.Tensor):
                yield t


def _make_optimizer(optimizer: str | Callable, params, lr: float) -> torch.optim.Optimizer:
    if callable(optimizer):
        return optimizer(params, lr)
    choices = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "sgd": torch.optim.SGD,
        "rmsprop": torch.optim.RMSprop,
    }
    if optimizer not in choices:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(choices)}")
    options = {}
    if optimizer in ("adam", "adamw") and _fusable(params):
        # One fused kernel for all parameters instead of ~10 ops per tensor: on a 2-core CPU
        # this takes a 784-400-20 VAE step from 9.1 to 6.2 ms (benchmarks/).
        options["fused"] = True
    return choices[optimizer](params, lr=lr, **options)


def _fusable(params: list[torch.Tensor]) -> bool:
    return (
        bool(params)
        and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        and len({p.device for p in params}) == 1
    )


def _lr_factor(schedule: str | Callable[[int], float] | None, epoch: int, epochs: int) -> float:
    if schedule is None:
        return 1.0
    if callable(schedule):
        return float(schedule(epoch))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    if schedule.startswith("exponential:"):
        return float(schedule.split(":", 1)[1]) ** epoch
    raise ValueError(f"unknown lr_schedule {schedule!r}: a callable, 'cosine' or 'exponential:G'")


class _Pair:
    """The model and guide to train, and the parameters the optimiser owns."""

    def __init__(self, model: Any, guide: Any) -> None:
        if guide is None:
            if not (hasattr(model, "model") and hasattr(model, "guide")):
                raise ValueError("give a module with .model and .guide methods, or a guide=")
            self.module, self.model, self.guide = model, model.model, model.guide
        else:
            self.module = model if isinstance(model, torch.nn.Module) else None
            self.model, self.guide = model, guide

    def parameters(self) -> list[torch.nn.Parameter]:
        params = list(self.module.parameters()) if self.module is not None else []
        seen = {id(p) for p in params}
        for _, p in pyro.get_param_store().named_parameters():
            if id(p) not in seen:
                params.append(p)
                seen.add(id(p))
        return params


def _positional(fn: Callable) -> Callable:
    """``fn(*tensors, subsample=idx)`` as ``f(*tensors, idx)``: JIT takes tensors positionally."""

    def call(*args):
        *tensors, idx = args
        return fn(*tensors, subsample=idx)

    return call


def fit(
    model: Any,
    data: Any,
    *,
    guide: Callable | None = None,
    objective: str | Any = "elbo",
    num_particles: int = 1,
    vectorize_particles: bool = True,
    max_plate_nesting: int | None = 1,
    jit: bool = False,
    optimizer: str | Callable = "adam",
    lr: float = 1e-3,
    lr_schedule: str | Callable[[int], float] | None = None,
    clip_norm: float | None = None,
    epochs: int = 10,
    batch_size: int | Sequence[int] | Mapping[str, int] = 128,
    drop_last: bool | None = None,
    device: Any = None,
    seed: int = 0,
    callbacks: Sequence[Callable[[EpochEnd], dict | None]] = (),
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool | str | os.PathLike = False,
    select_metric: str | None = None,
    select_mode: str = "max",
    sync_every: int = 50,
    progress: bool | None = None,
    config: Mapping[str, Any] | None = None,
    validate: bool | str = "first",
) -> History:
    """Train a model/guide pair by stochastic variational inference.

    Args:
        model: a module with ``.model`` and ``.guide`` methods (a pyrovae model or your own
            ``PyroModule``), or a model function when ``guide`` is given. Both are called as
            ``fn(*tensors, subsample=idx)`` and must put the data in a plate built with
            ``pyro.plate(name, size=N, subsample=idx)`` (see :func:`pyrovae.models.data_plate`).
        data: a tensor [N, ...], a tuple of tensors of length N (``(x, y)``), an object with
            ``for_epoch(epoch)`` and ``__len__``, or a mapping ``name -> one of those`` whose
            streams each give one batch per step (M2's labelled and unlabelled data).
        guide: the guide function, when ``model`` is a function (parameters from ``pyro.param``).
        objective: ``"elbo"`` (default), ``"meanfield"``, ``"enum"``, ``"iwae"``, or an object
            with ``differentiable_loss`` (see :func:`pyrovae.infer.make_objective`).
        num_particles: samples per data point, vectorised (default 1; K for ``"iwae"``).
        vectorize_particles: draw particles in one vectorised pass (default True).
        max_plate_nesting: given to Pyro's ELBO (default 1: pyrovae's data plate at dim=-1;
            ``None`` lets Pyro find it by running the model).
        jit: compile the loss with Pyro's JIT (default False; static models only).
        optimizer: ``"adam"`` (default; the fused implementation where the parameters allow),
            ``"adamw"``, ``"sgd"``, ``"rmsprop"``, or
            ``callable(params, lr) -> torch.optim.Optimizer``.
        lr: base learning rate (default 1e-3).
        lr_schedule: ``None`` (constant), ``"cosine"``, ``"exponential:G"`` or
            ``callable(epoch) -> factor``; the factor multiplies ``lr`` for the whole epoch.
        clip_norm: clip the gradient's global norm to this value (default: no clipping).
        epochs: total number of epochs (default 10); a resumed run continues up to it.
        batch_size: minibatch size, or one per stream (a sequence, or a mapping by name).
        drop_last: drop the last short batch of the largest stream (default: only when
            ``jit``, since a compiled graph has a fixed batch size).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: where the data is.
        seed: seeds Pyro/torch at the start and the shuffling of every epoch (default 0).
        callbacks: ``callable(EpochEnd) -> dict | None`` run after each epoch; returned
            metrics go into that epoch's history row, and ``{"stop": True}`` ends training
            after this epoch (its checkpoints are still written): a time budget or a target.
        checkpoint_dir: folder for ``last.pt`` (every ``checkpoint_every`` steps and at every
            epoch's end) and ``best.pt`` (when ``select_metric`` improves). Default: none.
        checkpoint_every: steps between mid-epoch checkpoints (default: epoch ends only).
        resume: ``True`` to continue from ``checkpoint_dir/last.pt`` if it exists, or a path.
        select_metric: a history key (from a callback) whose best value selects ``best.pt``.
        select_mode: ``"max"`` (default) or ``"min"`` for ``select_metric``.
        sync_every: steps between host reads of the loss (NaN check, progress; default 50).
        progress: show a tqdm bar (default: when stderr is a terminal).
        config: extra JSON-able settings stored in checkpoints (such as the command line).
        validate: Pyro's argument and shape checks. ``"first"`` (default): as Pyro's global
            setting for the first step of the run, off afterwards — the checks catch a wrong
            model once, and cost ~15 % of a small VAE's step if kept; ``True``/``False``:
            on/off for every step.

    Returns:
        A :class:`History`.

    Raises:
        ValueError: bad arguments or data (empty, NaN/inf, unknown device or objective).
        NonFiniteLossError: the loss became NaN or inf; names the epoch and step. The last
            checkpoint written before it is kept.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if select_mode not in ("max", "min"):
        raise ValueError(f"select_mode must be 'max' or 'min', got {select_mode!r}")
    pair = _Pair(model, guide)
    with param_scope(pair.module):
        device = _resolve_device(device, data)
        streams = make_streams(data, device)
        sizes = _batch_sizes(batch_size, streams)
        drop_last = jit if drop_last is None else drop_last
        if pair.module is not None:
            pair.module.to(device)
            pair.module.train()
        if isinstance(objective, str):
            objective = make_objective(
                objective, num_particles, vectorize_particles, jit, max_plate_nesting
            )
        model_fn, guide_fn = pair.model, pair.guide
        if jit:
            model_fn, guide_fn = _positional(model_fn), _positional(guide_fn)

        def loss_of(tensors, idx):
            if jit:
                return objective.differentiable_loss(model_fn, guide_fn, *tensors, idx)
            return objective.differentiable_loss(model_fn, guide_fn, *tensors, subsample=idx)

        pyro.set_rng_seed(seed)
        checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        resume_path = _resume_path(resume, checkpoint_dir)
        state = _RunState(history=History())
        fit_config = dict(
            objective=objective.__class__.__name__,
            num_particles=num_particles,
            lr=lr,
            epochs=epochs,
            batch_size=sizes,
            seed=seed,
            user=dict(config or {}),
        )

        if pair.module is None:
            # Parameters made by pyro.param in functions exist only after a first run.
            first = BatchPlan(streams, sizes, seed, 0, drop_last).step(0)
            tensors = streams[0].tensors(0)
            with pyro.poutine.block(), pyro.poutine.trace(param_only=True):
                guide_trace = pyro.poutine.trace(pair.guide).get_trace(*tensors, subsample=first[0])
                pyro.poutine.replay(pair.model, trace=guide_trace)(*tensors, subsample=first[0])
        optim = _make_optimizer(optimizer, pair.parameters(), lr)
        params = [p for group in optim.param_groups for p in group["params"]]

        if resume_path is not None:
            state = _restore(resume_path, pair, optim, state, device)
            logger.info("resumed from %s at epoch %d step %d", resume_path, state.epoch, state.step)
        else:
            pyro.set_rng_seed(seed)

        show = sys.stderr.isatty() if progress is None else progress
        start_step = state.step
        while state.epoch < epochs:
            epoch = state.epoch
            plan = BatchPlan(streams, sizes, seed, epoch, drop_last)
            epoch_tensors = [s.tensors(epoch) for s in streams]
            for group in optim.param_groups:
                group["lr"] = lr * _lr_factor(lr_schedule, epoch, epochs)
            if state.step_losses is None or state.step_losses.numel() != plan.num_steps:
                state.step_losses = torch.zeros(plan.num_steps, device=device)
            started = time.perf_counter()
            bar = _progress_bar(show, plan.num_steps, state.step_in_epoch, epoch)
            for k in range(state.step_in_epoch, plan.num_steps):
                batches = plan.step(k)
                checks = _validation(validate, first=state.step == start_step)
                with pyro.validation_enabled(checks):
                    loss = sum(
                        loss_of(t, idx) for t, idx in zip(epoch_tensors, batches, strict=True)
                    )
                optim.zero_grad(set_to_none=True)
                loss.backward()
                if clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip_norm)
                optim.step()
                state.step_losses[k] = loss.detach()
                state.step += 1
                state.step_in_epoch = k + 1
                at_checkpoint = bool(checkpoint_every and checkpoint_dir) and (
                    state.step % checkpoint_every == 0
                )
                if at_checkpoint or (k + 1) % sync_every == 0 or k + 1 == plan.num_steps:
                    _check_finite(state, epoch, k, checkpoint_dir)
                    if bar is not None:
                        bar.update(k + 1 - bar.n)
                        bar.set_postfix(loss=f"{float(state.step_losses[k]):.4g}")
                if at_checkpoint:
                    _save(checkpoint_dir / "last.pt", pair, optim, state, fit_config)
            if bar is not None:
                bar.close()
            mean_loss = float(state.step_losses.mean())
            row = dict(
                epoch=epoch,
                steps=plan.num_steps,
                loss=mean_loss,
                loss_per_example=mean_loss / max(s.size for s in streams),
                lr=optim.param_groups[0]["lr"],
                seconds=time.perf_counter() - started,
            )
            state.epoch, state.step_in_epoch = epoch + 1, 0
            info = EpochEnd(epoch, state.step, mean_loss, pair.module, state.history, row)
            for callback in callbacks:
                row.update(callback(info) or {})
            stop = bool(row.pop("stop", False))
            state.history.epochs.append(row)
            logger.info("epoch %d: %s", epoch, _fmt(row))
            improved = _update_best(state, row, select_metric, select_mode)
            if checkpoint_dir is not None:
                state.history.last_checkpoint = _save(
                    checkpoint_dir / "last.pt", pair, optim, state, fit_config
                )
                if improved:
                    state.history.best_checkpoint = _save(
                        checkpoint_dir / "best.pt", pair, optim, state, fit_config
                    )
            if stop:
                logger.info("a callback stopped training after epoch %d", epoch)
                break
        if pair.module is not None:
            pair.module.eval()
        return state.history


def _validation(validate: bool | str, first: bool) -> bool:
    if validate == "first":
        return first and pyro.infer.util.is_validation_enabled()
    if isinstance(validate, bool):
        return validate
    raise ValueError(f"validate must be True, False or 'first', got {validate!r}")


@dataclass
class _RunState:
    history: History
    epoch: int = 0
    step: int = 0
    step_in_epoch: int = 0
    step_losses: torch.Tensor | None = None


def _batch_sizes(batch_size, streams) -> list[int]:
    if isinstance(batch_size, Mapping):
        missing = [s.name for s in streams if s.name not in batch_size]
        if missing:
            raise ValueError(f"batch_size has no entry for streams {missing}")
        sizes = [batch_size[s.name] for s in streams]
    elif isinstance(batch_size, Sequence):
        if len(batch_size) != len(streams):
            raise ValueError(f"need {len(streams)} batch sizes, got {len(batch_size)}")
        sizes = list(batch_size)
    else:
        sizes = [batch_size] * len(streams)
    for b in sizes:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"batch_size must be a positive integer, got {b!r}")
    return sizes


def _resume_path(resume, checkpoint_dir) -> Path | None:
    if resume is False or resume is None:
        return None
    if resume is True:
        if checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir")
        path = checkpoint_dir / "last.pt"
        return path if path.exists() else None
    return Path(resume)


def _check_finite(state: _RunState, epoch: int, k: int, checkpoint_dir) -> None:
    seen = state.step_losses[: k + 1]
    bad = ~torch.isfinite(seen)
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        global_step = state.step - (k - first) - 1
        kept = checkpoint_dir / "last.pt" if checkpoint_dir is not None else None
        where = f"; the last good checkpoint is {kept}" if kept and kept.exists() else ""
        raise NonFiniteLossError(
            f"loss became {float(seen[first])} at epoch {epoch}, step {first} of the epoch "
            f"(global step {global_step}){where}"
        )


def _update_best(state: _RunState, row: dict, metric: str | None, mode: str) -> bool:
    if metric is None:
        return False
    if metric not in row:
        raise ValueError(f"select_metric {metric!r} is not in the history row {sorted(row)}")
    value = row[metric]
    best = state.history.best
    if best is None or (value > best[metric] if mode == "max" else value < best[metric]):
        state.history.best = dict(row)
        return True
    return False


def _save(path: Path, pair: _Pair, optim, state: _RunState, fit_config: dict) -> Path:
    return save_checkpoint(
        path,
        pair.module,
        optimizer_state=optim.state_dict(),
        rng_state=rng_state(),
        epoch=state.epoch,
        step=state.step,
        step_in_epoch=state.step_in_epoch,
        step_losses=None if state.step_losses is None else state.step_losses.cpu(),
        history=state.history.epochs,
        best=state.history.best,
        fit_config=fit_config,
    )


def _restore(path: Path, pair: _Pair, optim, state: _RunState, device) -> _RunState:
    payload = read_checkpoint(path, map_location=device)
    if pair.module is not None:
        pair.module.load_state_dict(payload["model_state"])
    else:
        pyro.get_param_store().set_state(payload["param_store"])
    optim.load_state_dict(payload["optimizer_state"])
    set_rng_state(_cpu_rng(payload["rng_state"]))
    state.epoch, state.step = payload["epoch"], payload["step"]
    state.step_in_epoch = payload["step_in_epoch"]
    losses = payload.get("step_losses")
    state.step_losses = None if losses is None else losses.to(device)
    state.history.epochs = list(payload.get("history", []))
    state.history.best = payload.get("best")
    return state


def _cpu_rng(state: dict) -> dict:
    out = dict(state)
    out["torch"] = state["torch"].cpu()
    if "cuda" in state:
        out["cuda"] = [s.cpu() for s in state["cuda"]]
    return out


def _progress_bar(show: bool, total: int, initial: int, epoch: int):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}", leave=False)


def _fmt(row: dict) -> str:
    return ", ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
