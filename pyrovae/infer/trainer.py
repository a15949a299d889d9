"""``fit``: stochastic variational inference for any model/guide pair.

The loop is plain PyTorch around Pyro's objectives: each step draws one index batch from every
data stream, adds up ``objective.differentiable_loss(model, guide, *tensors, subsample=idx)``
over the streams (each already scaled by N/M by the model's data plate), and takes one optimiser
step. Losses stay on the device; the host looks at them only every ``sync_every`` steps and at
checkpoints, which is when a NaN or inf is caught.

``fit`` is a short loop over named steps of a private ``_Run``: prepare (arguments, streams,
device, objective, optimiser, resume), run an epoch, end an epoch (history row, callbacks,
best-model selection) and checkpoint. Its arguments travel grouped (`.options`); one
optimisation step is a [`Step`][step.Step] built by
[`make_step`][step.make_step], which the epoch loop only calls. With ``devices`` or
``num_nodes`` the same loop runs in every process of a data-parallel group
(`.distributed`): each takes its shard of every global batch, the step averages the
gradients, and rank 0 writes the checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import pyro
import torch

from .callbacks import EpochEnd, History
from .checkpoint import rng_state
from .distributed import DataParallel, launch, rank_seed
from .objectives import make_objective
from .options import Checkpointing, LossOptions, Monitoring, Optimisation, Schedule
from .resume import (
    RunState,
    allowed_changes,
    restore_checkpoint_paths,
    restore_run,
    resume_source,
    run_config,
    save_run,
)
from .scope import param_scope
from .step import ModelPair, check_subsampling, make_step
from .streams import BatchPlan, make_streams, resolve_device

logger = logging.getLogger(__name__)

__all__ = ["EpochEnd", "History", "NonFiniteLossError", "fit", "param_scope"]


class NonFiniteLossError(FloatingPointError):
    """The training loss, or a parameter, became NaN or inf; the message names the epoch and
    step."""


def fit(
    model: Any,
    data: Any,
    *,
    guide: Callable | None = None,
    objective: str | Any = "elbo",
    num_particles: int = 1,
    dreg: bool = False,
    vectorize_particles: bool = True,
    max_plate_nesting: int | None = 1,
    jit: bool = False,
    compiled: bool = False,
    precision: str = "fp32",
    optimizer: str | Callable = "adam",
    lr: float = 1e-3,
    lr_schedule: str | Callable[[int], float] | None = None,
    clip_norm: float | None = None,
    epochs: int = 10,
    batch_size: int | Sequence[int] | Mapping[str, int] = 128,
    drop_last: bool | None = None,
    step_scheme: str = "joint",
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
    allow_config_change: bool | Collection[str] = False,
    devices: int | None = None,
    num_nodes: int = 1,
    fabric: Any = None,
) -> History:
    """Train a model/guide pair by stochastic variational inference.

    Args:
        model: a module with ``.model`` and ``.guide`` methods (a pyrovae model or your own
            ``PyroModule``), or a model function when ``guide`` is given. Both are called as
            ``fn(*tensors, subsample=idx)`` and must put the data in a plate built with
            ``pyro.plate(name, size=N, subsample=idx)`` (see [`pyrovae.models.data_plate`][]).
        data: a tensor [N, ...], a tuple of tensors of length N (``(x, y)``), an object with
            ``for_epoch(epoch)`` and ``__len__``, or a mapping ``name -> one of those`` whose
            streams each give one batch per step (M2's labelled and unlabelled data).
        guide: the guide function, when ``model`` is a function (parameters from ``pyro.param``).
        objective: ``"elbo"`` (default), ``"meanfield"``, ``"enum"``, ``"iwae"``,
            ``"sum_and_sample"`` (unbiased for ``"enum"`` at k + 1 = 4 of the C values: give
            ``SumAndSampleELBO(topk=k)`` for another k), or an object
            with ``differentiable_loss`` (see [`pyrovae.infer.make_objective`][]).
        num_particles: samples per data point, vectorised (default 1; K for ``"iwae"``).
        dreg: with ``objective="iwae"``, the doubly reparameterised gradient for the guide
            (Tucker et al. 2019; [`pyrovae.infer.dreg`][]): the same bound, a lower-variance
            encoder gradient (default False).
        vectorize_particles: draw particles in one vectorised pass (default True).
        max_plate_nesting: given to Pyro's ELBO (default 1: pyrovae's data plate at dim=-1;
            ``None`` lets Pyro find it by running the model).
        jit: compile the loss with Pyro's JIT (default False; static models only). For
            ``"iwae"`` (with or without ``dreg``) this removes Pyro's per-step Python work, most
            of a small VAE's overhead over plain PyTorch at batch 20 (benchmarks/batch20.py).
        compiled: train with [`CompiledStep`][compiled.CompiledStep] and a graph-safe
            objective (``make_objective(..., graph_safe=True)``, no host sync in the loss): on
            CUDA the whole step (loss, backward, capturable Adam) is captured once per batch
            shape as a CUDA graph and replayed; on the CPU the same step runs eagerly. Needs
            ``"adam"``/``"adamw"`` on CUDA and implies ``drop_last`` (static shapes). Default
            False.
        precision: ``"fp32"`` (default) or ``"bf16"``: compute each step's loss under
            bfloat16 autocast (CPU or CUDA), the networks' matrix products in bfloat16 and
            everything Pyro computes in float32; parameters, gradients and the optimiser's
            state stay float32 (`.precision`). Eager steps only (not ``compiled``/``jit``).
        optimizer: ``"adam"`` (default; the fused implementation where the parameters allow),
            ``"adamw"``, ``"sgd"``, ``"rmsprop"``, or
            ``callable(params, lr) -> torch.optim.Optimizer``.
        lr: base learning rate (default 1e-3).
        lr_schedule: ``None`` (constant), ``"cosine"``, ``"exponential:G"`` or
            ``callable(epoch) -> factor``; the factor multiplies ``lr`` for the whole epoch.
        clip_norm: clip the gradient's global norm to this value (default: no clipping).
        epochs: total number of epochs (default 10); a resumed run continues up to it.
        batch_size: minibatch size, or one per stream (a sequence, or a mapping by name); per
            process with ``devices``/``num_nodes``.
        drop_last: drop the last short batch of the largest stream (default: only when
            ``jit``, since a compiled graph has a fixed batch size).
        step_scheme: with several streams, ``"joint"`` (default: every step adds a batch of
            each) or ``"alternating"`` (each step one stream's batch, every stream once per
            epoch, its batches spread evenly; Pyro's SS-VAE example). Each step stays an
            unbiased estimate of the whole objective (``pyrovae.infer.streams.BatchPlan``).
            Not with ``compiled``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: where the data is.
        seed: seeds Pyro/torch at the start and the shuffling of every epoch (default 0).
        callbacks: ``callable(EpochEnd) -> dict | None`` run after each epoch; returned
            metrics go into that epoch's history row, and ``{"stop": True}`` ends training
            after this epoch (its checkpoints are still written): a time budget or a target.
        checkpoint_dir: folder for ``last.pt`` (every ``checkpoint_every`` steps and at every
            epoch's end) and ``best.pt`` (when ``select_metric`` improves). Default: none.
        checkpoint_every: steps between mid-epoch checkpoints (default: epoch ends only).
        resume: ``True`` to continue from ``checkpoint_dir/last.pt`` if it exists, or a path.
            Each write of ``last.pt`` first keeps the one before as ``previous.pt``; when
            ``last.pt`` is missing or unreadable (truncated, corrupted), ``resume=True`` warns
            (`CheckpointWarning`) and continues from
            ``previous.pt``. A resumed run must have the checkpoint's run configuration (model
            class and config, data stream names and sizes, objective, ``num_particles``,
            optimizer, ``lr``, ``lr_schedule``, ``clip_norm``, batch sizes, ``seed``,
            ``precision``; ``epochs``
            may change) unless ``allow_config_change`` names the changes.
        select_metric: a history key (from a callback) whose best value selects ``best.pt``.
        select_mode: ``"max"`` (default) or ``"min"`` for ``select_metric``.
        sync_every: steps between host reads of the loss (NaN check, progress; default 50).
        progress: show a tqdm bar (default: when stderr is a terminal).
        config: extra JSON-able settings stored in checkpoints (such as the command line).
        validate: Pyro's argument and shape checks. ``"first"`` (default): as Pyro's global
            setting for the first step of the run, off afterwards — the checks catch a wrong
            model once, and cost ~15 % of a small VAE's step if kept; ``True``/``False``:
            on/off for every step.
        allow_config_change: settings a resumed run may change, e.g. ``("lr",)``, or ``True``
            for any (default ``False``: a difference is a ``ValueError`` listing them). Every
            configuration the run has had is kept in ``History.configs`` and the checkpoint.
        devices: processes (devices) per node for data-parallel training (default: one
            process, no Lightning). Each process trains on its shard of every global batch of
            ``devices * num_nodes * batch_size`` rows and the gradients are averaged; the
            processes are launched by Lightning Fabric (``device="cuda"``: one GPU each, NCCL;
            otherwise CPU processes, gloo). The script that calls ``fit`` runs in every
            process: write results on rank 0 only
            ([`pyrovae.infer.distributed.global_rank`][]). See docs/scaling.md.
        num_nodes: machines taking part (default 1), each running ``devices`` processes.
        fabric: a ``lightning.fabric.Fabric`` to launch and train in, instead of
            ``devices``/``num_nodes`` (for another strategy, cluster environment or timeout).

    Data may also be NumPy arrays: floating arrays become tensors of the model's floating-point
    dtype, integer arrays int64. On its first step ``fit`` traces the model once and warns
    ([`SubsampleWarning`][step.SubsampleWarning]) if its data plate ignores ``subsample``.

    Returns:
        A [`History`][].

    Raises:
        ValueError: bad arguments or data (empty, NaN/inf, unknown device or objective), or a
            resume whose run configuration differs from the checkpoint's.
        TypeError: ``model`` is a class rather than a model built from it.
        CheckpointError: the checkpoint to resume from (and ``previous.pt``) is unusable.
        NonFiniteLossError: the loss became NaN or inf; names the epoch and step. The last
            checkpoint written before it is kept.
    """
    groups = dict(
        loss=LossOptions(
            objective, num_particles, vectorize_particles, max_plate_nesting, jit, validate,
            compiled, dreg, precision,
        ),
        optimisation=Optimisation(optimizer, lr, lr_schedule, clip_norm),
        schedule=Schedule(epochs, batch_size, drop_last, seed, device, step_scheme),
        checkpointing=Checkpointing(
            checkpoint_dir, checkpoint_every, resume, allow_config_change, config
        ),
        monitoring=Monitoring(tuple(callbacks), select_metric, select_mode, sync_every, progress),
    )
    parallel = launch(devices, num_nodes, fabric, device)
    if parallel is not None:
        groups["schedule"] = Schedule(
            epochs, batch_size, drop_last, seed, parallel.device, step_scheme
        )
    pair = ModelPair(model, guide)
    quiet = parallel.quiet_unless_main() if parallel is not None else contextlib.nullcontext()
    with param_scope(pair.module), quiet:
        run = _Run(pair, data, parallel=parallel, **groups)
        while run.state.epoch < run.schedule.epochs:
            steps, seconds = run.run_epoch()
            if run.end_epoch(steps, seconds):
                break
        return run.finish()


class _Run:
    """One call of ``fit``: its prepared pieces, its state, and the steps of its loop."""

    def __init__(
        self,
        pair: ModelPair,
        data: Any,
        *,
        loss: LossOptions,
        optimisation: Optimisation,
        schedule: Schedule,
        checkpointing: Checkpointing,
        monitoring: Monitoring,
        parallel: DataParallel | None = None,
    ) -> None:
        self.parallel = parallel
        self.rank, self.world_size = (0, 1) if parallel is None else (
            parallel.rank, parallel.world_size
        )
        self.pair, self.optimisation, self.schedule = pair, optimisation, schedule
        self.checkpointing, self.monitoring = checkpointing, monitoring
        allow = allowed_changes(checkpointing.allow_config_change)
        if loss.compiled and schedule.step_scheme != "joint":
            raise ValueError("compiled=True takes a batch of every stream each step: use "
                             "step_scheme='joint'")
        self._prepare_data(data, loss.jit or loss.compiled)
        self._prepare_step(loss)
        self._start_or_resume(allow)
        self.checked_subsampling = False

    def _prepare_data(self, data: Any, jit: bool) -> None:
        """The device, the streams and their batch sizes; the module moved to the device."""
        pair, schedule = self.pair, self.schedule
        self.device = resolve_device(schedule.device, data)
        self.streams = make_streams(data, self.device, _float_dtype(pair.module))
        # Global batch sizes: each of the world_size processes takes a shard of batch_size rows.
        sizes = schedule.batch_sizes([s.name for s in self.streams])
        self.sizes = [b * self.world_size for b in sizes]
        self.drop_last = jit if schedule.drop_last is None else schedule.drop_last
        if pair.module is not None:
            pair.module.to(self.device)
            pair.module.train()

    def _prepare_step(self, loss: LossOptions) -> None:
        """Seed, the objective, the parameters, the optimiser and the training step."""
        pair, schedule, optimisation = self.pair, self.schedule, self.optimisation
        objective = loss.objective
        if isinstance(objective, str):
            objective = make_objective(
                objective, loss.num_particles, loss.vectorize_particles, loss.jit,
                loss.max_plate_nesting, graph_safe=loss.compiled, dreg=loss.dreg,
            )
        elif loss.compiled and not getattr(objective, "graph_safe", False):
            raise ValueError(
                "compiled=True needs a graph-safe objective: give its name, or one made by "
                "make_objective(..., graph_safe=True)"
            )
        # The only seeding (its own on every rank); a resumed run restores its RNGs.
        pyro.set_rng_seed(rank_seed(schedule.seed, self.rank))
        if pair.module is None:
            first = BatchPlan(self.streams, self.sizes, schedule.seed, 0, self.drop_last).step(0)
            pair.create_params(self.streams[0].tensors(0), first[0])
        optimizer = optimisation.make_optimizer(
            pair.parameters(), capturable=loss.compiled and self.device.type == "cuda"
        )
        self.step = make_step(pair, loss, objective, optimizer, optimisation.clip_norm)
        self.optimizer_state = getattr(self.step, "checkpoint_state", self.step.optimizer)
        if self.parallel is not None:
            self.parallel.attach(self.step)
        self.config = run_config(
            model=pair.describe(), data={s.name: s.size for s in self.streams},
            objective=objective, num_particles=loss.num_particles, optimizer=optimisation.optimizer,
            lr=optimisation.lr, lr_schedule=optimisation.lr_schedule,
            clip_norm=optimisation.clip_norm, batch_size=self.sizes, seed=schedule.seed,
            precision=loss.precision, step_scheme=schedule.step_scheme,
        )

    def _start_or_resume(self, allow: set[str]) -> None:
        """A fresh run state, or the checkpoint's (its configuration checked against ours)."""
        checkpointing, pair = self.checkpointing, self.pair
        self.fit_config = dict(
            self.config, epochs=self.schedule.epochs, user=dict(checkpointing.config or {}),
            world_size=self.world_size,
        )
        source = resume_source(checkpointing)
        if source is None:
            self.state = RunState(History(configs=[dict(epoch=0, step=0, config=self.config)]))
        else:
            self.state = restore_run(
                source, pair, self.optimizer_state, self.device, self.config, allow,
                rank=self.rank,
            )
            restore_checkpoint_paths(self.state.history, checkpointing)
            if self.state.epoch > self.schedule.epochs:  # else a silent no-op
                raise ValueError(
                    f"epochs={self.schedule.epochs} is fewer than the {self.state.epoch} epochs "
                    f"{source} has done: give a larger total to train on"
                )
            logger.info(
                "resumed from %s at epoch %d step %d", source, self.state.epoch, self.state.step
            )
        if self.parallel is not None:
            self.parallel.broadcast_parameters(pair.parameters())
        # A last.pt found bad on resume is not kept as previous.pt over the good one.
        self.keep_previous = source is None or source != checkpointing.previous

    def run_epoch(self) -> tuple[int, float]:
        """Train one epoch (from where a resumed run stopped); its number of steps and seconds."""
        state, epoch = self.state, self.state.epoch
        plan = BatchPlan(
            self.streams, self.sizes, self.schedule.seed, epoch, self.drop_last,
            rank=self.rank, world_size=self.world_size, scheme=self.schedule.step_scheme,
        )
        tensors = [s.tensors(epoch) for s in self.streams]
        self.lr = self.optimisation.lr_at(epoch, self.schedule.epochs)
        self.step.set_lr(self.lr)
        if state.step_losses is None or state.step_losses.numel() != plan.num_steps:
            state.step_losses = torch.zeros(plan.num_steps, device=self.device)
        started = time.perf_counter()
        progress = self.monitoring.progress if self.rank == 0 else False
        bar = _progress_bar(progress, plan.num_steps, state.step_in_epoch, epoch)
        for k in range(state.step_in_epoch, plan.num_steps):
            batches = plan.step(k)
            if self.parallel is not None or plan.step_weights is not None:
                self.step.weights = plan.weights(k)
            try:
                state.step_losses[k] = self.step(tensors, batches)
            except ValueError as err:  # a distribution's check of diverged weights, say
                self._check_parameters(f"in epoch {epoch}, step {k} of the epoch", err)
                raise
            state.step += 1
            state.step_in_epoch = k + 1
            if not self.checked_subsampling:
                self.checked_subsampling = True
                if getattr(self.step, "data_plates", None) is not None:
                    check_subsampling(self.streams, self.step.data_plates, batches)
            self._after_step(k, plan.num_steps, bar)
        if bar is not None:
            bar.close()
        return plan.num_steps, time.perf_counter() - started

    def _after_step(self, k: int, num_steps: int, bar) -> None:
        """Read the losses on the host when due (NaN check, progress); mid-epoch checkpoints."""
        state = self.state
        at_checkpoint = self.checkpointing.mid_epoch(state.step)
        if at_checkpoint or (k + 1) % self.monitoring.sync_every == 0 or k + 1 == num_steps:
            _check_finite(state, state.epoch, k, self.checkpointing.last)
            if bar is not None:
                bar.update(k + 1 - bar.n)
                # the step's loss is scaled to the whole data set: shown per example
                per_example = float(state.step_losses[k]) / max(s.size for s in self.streams)
                bar.set_postfix(loss_per_example=f"{per_example:.4g}")
        if at_checkpoint:
            self._check_parameters(f"in epoch {state.epoch}, step {k} of the epoch")
            self._save(self.checkpointing.last)

    def _check_parameters(self, where: str, cause: BaseException | None = None) -> None:
        """Raise `NonFiniteLossError` if a parameter is NaN or inf (one host sync): a finite
        last loss does not mean finite weights, and callbacks and checkpoints need them."""
        params = [p for p in self.pair.parameters() if p.is_floating_point()]
        if not params or bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            return
        kept = self.checkpointing.last
        kept = f"; the last good checkpoint is {kept}" if kept and kept.exists() else ""
        raise NonFiniteLossError(
            f"the parameters became NaN or inf {where} (global step {self.state.step}){kept}"
        ) from cause

    def end_epoch(self, steps: int, seconds: float) -> bool:
        """The epoch's row, the callbacks, best-model selection, checkpoints; True to stop."""
        state, epoch = self.state, self.state.epoch
        if self.parallel is not None:  # each rank's losses estimate the same global batch's
            self.parallel.mean_(state.step_losses)
        mean_loss = float(state.step_losses.mean())
        row = dict(
            epoch=epoch,
            steps=steps,
            loss=mean_loss,
            loss_per_example=mean_loss / max(s.size for s in self.streams),
            lr=self.lr,
            seconds=seconds,
        )
        state.epoch, state.step_in_epoch = epoch + 1, 0
        self._check_parameters(f"by the end of epoch {epoch}")  # before callbacks use them
        info = EpochEnd(epoch, state.step, mean_loss, self.pair.module, state.history, row)
        for callback in self.monitoring.callbacks:
            row.update(callback(info) or {})
        if self.parallel is not None:  # one history (metrics, stop) for every rank: rank 0's
            row = self.parallel.from_main(row)
        stop = bool(row.pop("stop", False))
        state.history.epochs.append(row)
        logger.info("%s", _epoch_line(row, self.monitoring.select_metric))
        self.checkpoint(improved=self._update_best(row))
        if stop:
            logger.info("a callback stopped training after epoch %d", epoch)
        return stop

    def _update_best(self, row: dict) -> bool:
        metric, history = self.monitoring.select_metric, self.state.history
        if metric is None:
            return False
        if metric not in row:
            raise ValueError(f"select_metric {metric!r} is not in the history row {sorted(row)}")
        best = None if history.best is None else history.best[metric]
        if self.monitoring.improves(row[metric], best):
            history.best = dict(row)
            return True
        return False

    def checkpoint(self, improved: bool) -> None:
        """At an epoch's end: ``last.pt``, and ``best.pt`` when the selected metric improved."""
        if self.checkpointing.directory is None:
            return
        history = self.state.history
        history.last_checkpoint = self._save(self.checkpointing.last)
        if improved:
            history.best_checkpoint = self._save(self.checkpointing.best)

    def _save(self, path):
        is_last = path == self.checkpointing.last
        previous = self.checkpointing.previous if is_last and self.keep_previous else None
        rank_rng_states = None
        if self.parallel is not None:  # every rank takes part; rank 0 alone writes
            if self.state.step_losses is not None:
                self.parallel.mean_(self.state.step_losses)
            rank_rng_states = self.parallel.gather(rng_state())
            if not self.parallel.is_main:
                self.keep_previous = self.keep_previous or is_last
                return path
        saved = save_run(
            path, self.pair, self.optimizer_state, self.state, self.fit_config,
            self.state.history.configs, previous=previous, rank_rng_states=rank_rng_states,
        )
        self.keep_previous = self.keep_previous or is_last
        return saved

    def finish(self) -> History:
        if self.parallel is not None:  # rank 0's checkpoints are on disk when fit returns
            self.parallel.barrier()
        if self.pair.module is not None:
            self.pair.module.eval()
        return self.state.history


def _float_dtype(module: torch.nn.Module | None) -> torch.dtype | None:
    if module is None:
        return None
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def _check_finite(state: RunState, epoch: int, k: int, last_checkpoint) -> None:
    seen = state.step_losses[: k + 1]
    bad = ~torch.isfinite(seen)
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        global_step = state.step - (k - first) - 1
        kept = last_checkpoint
        where = f"; the last good checkpoint is {kept}" if kept and kept.exists() else ""
        raise NonFiniteLossError(
            f"loss became {float(seen[first])} at epoch {epoch}, step {first} of the epoch "
            f"(global step {global_step}){where}"
        )


def _progress_bar(progress: bool | None, total: int, initial: int, epoch: int):
    show = sys.stderr.isatty() if progress is None else progress
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}", leave=False)


#: The row's keys that every epoch has; what the callbacks add comes after them.
_ROW_KEYS = ("epoch", "steps", "loss", "loss_per_example", "lr", "seconds")


def _epoch_line(row: dict, select_metric: str | None) -> str:
    """One short line per epoch (the full row stays in the history): the loss per example (a
    reader compares runs per example, not by the data set's total), one metric (the selected
    one, else the first a callback added), the learning rate and the seconds."""
    metric = select_metric if select_metric in row else next(
        (k for k, v in row.items() if k not in _ROW_KEYS and isinstance(v, (int, float))), None)
    parts = [f"loss/example {row['loss_per_example']:.5g}"]
    if metric is not None:
        value = row[metric]
        parts.append(f"{metric} {value:.5g}" if isinstance(value, float) else f"{metric} {value}")
    parts += [f"lr {row['lr']:.3g}", f"{row['seconds']:.3g} s"]
    return f"epoch {row['epoch']}: " + ", ".join(parts)
