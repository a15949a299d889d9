"""A run's state, how it is written to a checkpoint, and how a run continues from one.

``RunState`` is what changes while ``fit`` runs (epoch, global step, step within the epoch,
the epoch's losses on the device, the history). `save_run` writes it with the model,
optimiser and random-number states; `restore_run` reads it back after checking that the
new call's run configuration (`run_config`) matches the checkpoint's, and
`resume_source` picks the file, falling back from a bad ``last.pt`` to ``previous.pt``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch

from .callbacks import History
from .checkpoint import (
    CheckpointError,
    keep_previous,
    param_store_state,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    to_plain,
)
from .options import Checkpointing

logger = logging.getLogger(__name__)

#: The settings a resumed run must share with its checkpoint unless ``allow_config_change``
#: names them. ``epochs`` may change freely (a run continues up to the new total).
CONFIG_KEYS = (
    "model",
    "data",
    "objective",
    "num_particles",
    "optimizer",
    "lr",
    "lr_schedule",
    "clip_norm",
    "batch_size",
    "seed",
    "precision",
)
#: What a checkpoint written by ``fit`` holds beyond the model (what resuming needs).
_RUN_KEYS = ("optimizer_state", "rng_state", "epoch", "step", "step_in_epoch")
#: Keys whose change makes the current epoch's batches differ, so a run resumed mid-epoch
#: restarts that epoch.
_PLAN_KEYS = ("data", "batch_size", "seed")


class CheckpointWarning(UserWarning):
    """A checkpoint could not be used and ``fit`` fell back to an older one."""


@dataclass
class RunState:
    history: History
    epoch: int = 0
    step: int = 0
    step_in_epoch: int = 0
    step_losses: torch.Tensor | None = None


def run_config(
    *, model: dict, data: dict[str, int], objective: Any, num_particles: int, optimizer: Any,
    lr: float, lr_schedule: Any, clip_norm: float | None, batch_size: list[int], seed: int,
    precision: str = "fp32", step_scheme: str = "joint",
) -> dict[str, Any]:
    """The run's settings that a resumed run is compared against (JSON-able values)."""
    return dict(
        model=model,
        data=data,
        objective=getattr(objective, "config_name", objective.__class__.__name__),
        num_particles=num_particles,
        optimizer=_name(optimizer),
        lr=lr,
        lr_schedule=_name(lr_schedule),
        clip_norm=clip_norm,
        batch_size=list(batch_size),
        seed=seed,
        precision=precision,
        step_scheme=step_scheme,
    )


def _name(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float)):
        return value
    return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"


def config_differences(stored: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple]:
    """``key -> (stored, new)`` for settings in both that differ (old checkpoints hold fewer);
    ``new`` is compared as a checkpoint stores it (`to_plain`: a user's network by its class)."""
    new = {key: to_plain(value, key) for key, value in new.items()}
    return {
        key: (stored[key], new[key])
        for key in CONFIG_KEYS
        if key in stored and key in new and not _same(stored[key], new[key])
    }


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):  # e.g. tensors in a model's config
        return repr(a) == repr(b)


def allowed_changes(allow: bool | Collection[str]) -> set[str]:
    if allow is True:
        return set(CONFIG_KEYS)
    if allow is False or allow is None:
        return set()
    if isinstance(allow, str):
        allow = (allow,)
    unknown = sorted(set(allow) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(
            f"allow_config_change names unknown settings {unknown}; choose from {list(CONFIG_KEYS)}"
        )
    return set(allow)


def resume_source(checkpointing: Checkpointing) -> Path | None:
    """The checkpoint to resume from, or None to start afresh.

    ``resume=True`` uses ``last.pt`` in the checkpoint folder; if it is missing or unreadable
    and ``previous.pt`` is good, it warns (`CheckpointWarning`) and uses that. A path is
    used as given (no fallback).
    """
    resume = checkpointing.resume
    if resume is False or resume is None:
        return None
    if resume is not True:
        return Path(resume)
    last, previous = checkpointing.last, checkpointing.previous
    if not last.exists() and not previous.exists():
        return None
    try:
        read_checkpoint(last)
        return last
    except (CheckpointError, FileNotFoundError) as err:
        if not previous.exists():
            raise
        try:
            read_checkpoint(previous)
        except CheckpointError as second:
            raise CheckpointError(f"no usable checkpoint to resume: {err}; and {second}") from None
        warnings.warn(f"{err}; resuming from {previous}", CheckpointWarning, stacklevel=4)
        return previous


def save_run(
    path: Path, pair, optimizer, state: RunState, fit_config: dict, configs: list[dict],
    previous: Path | None = None, rank_rng_states: list[dict] | None = None,
) -> Path:
    """Write the run to ``path`` (first keeping the file there as ``previous``, if given).

    ``rank_rng_states``: in data-parallel training, every rank's random-number states (rank 0's
    are ``rng_state`` as well), so that each rank of a resumed run continues its own stream.
    """
    extra = {} if rank_rng_states is None else {"rank_rng_states": rank_rng_states}
    if previous is not None:
        keep_previous(path, previous)
    return save_checkpoint(
        path,
        pair.module,
        optimizer_state=optimizer.state_dict(),
        rng_state=rng_state(),
        epoch=state.epoch,
        step=state.step,
        step_in_epoch=state.step_in_epoch,
        step_losses=None if state.step_losses is None else state.step_losses.cpu(),
        history=state.history.epochs,
        best=state.history.best,
        fit_config=fit_config,
        run_configs=configs,
        **extra,
    )


def restore_run(
    path: Path, pair, optimizer, device, config: dict[str, Any], allow: set[str], rank: int = 0
) -> RunState:
    """Load the run at ``path`` into ``pair`` and ``optimizer``; refuse a changed configuration.

    ``rank`` (data-parallel training) restores that rank's random-number states when the
    checkpoint holds them; a rank the checkpoint's run did not have (a larger world size) is
    seeded from ``(seed, rank, step)``.

    Raises:
        ValueError: the checkpoint's run configuration differs from ``config`` in settings not
            in ``allow``; the message lists every difference and the way to accept them.
    """
    payload = read_checkpoint(path, map_location=device)
    missing = [key for key in _RUN_KEYS if key not in payload]
    if missing:
        raise CheckpointError(
            f"cannot resume from {path}: it holds no training run ({', '.join(missing)} "
            "missing); a file written by save_checkpoint is for load_checkpoint only"
        )
    stored = payload.get("fit_config") or {}
    changed = config_differences(stored, config)
    refused = {k: v for k, v in changed.items() if k not in allow}
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ValueError(
            f"cannot resume from {path}: the run configuration differs ({listed}). Pass "
            f"allow_config_change={tuple(refused)!r} (or True) to continue with the new "
            "settings, or resume=False to start afresh"
        )
    if pair.module is not None:
        try:
            pair.module.load_state_dict(payload["model_state"])
        except (KeyError, RuntimeError) as err:  # missing or mis-shaped weights
            first = str(err).strip().splitlines()[-1].strip() if str(err).strip() else ""
            raise CheckpointError(
                f"cannot resume from {path}: its weights do not fit the model ({first})"
            ) from None
    else:
        _restore_param_store(param_store_state(payload))
    if "optimizer" in changed:
        logger.info("optimizer changed on resume: its state is not restored")
    else:
        optimizer.load_state_dict(payload["optimizer_state"])
    set_rng_state(_cpu_rng(_rank_rng(payload, rank, config.get("seed", 0))))
    history = History(
        epochs=list(payload.get("history", [])),
        best=payload.get("best"),
        configs=list(payload.get("run_configs") or []),
    )
    if not history.configs and stored:
        history.configs = [dict(epoch=0, step=0, config=_comparable(stored))]
    state = RunState(history, payload["epoch"], payload["step"], payload["step_in_epoch"])
    losses = payload.get("step_losses")
    state.step_losses = None if losses is None else losses.to(device)
    if changed:
        logger.info("resuming %s with changed settings %s", path, sorted(changed))
        history.configs.append(dict(epoch=state.epoch, step=state.step, config=config))
        if state.step_in_epoch and any(k in changed for k in _PLAN_KEYS):
            logger.warning(
                "resumed mid-epoch with a new %s: epoch %d restarts from its first step",
                "/".join(k for k in _PLAN_KEYS if k in changed), state.epoch,
            )
            state.step_in_epoch, state.step_losses = 0, None
    return state


def restore_checkpoint_paths(history: History, checkpointing: Checkpointing) -> None:
    """Point a resumed history at the folder's ``last.pt`` and ``best.pt``.

    ``best.pt`` counts only if it was written at the resumed history's best epoch: one from
    another branch of the run (resumed from ``previous.pt`` or an older file) is left unnamed,
    and the next epoch that improves on the history's best replaces it.
    """
    last, best = checkpointing.last, checkpointing.best
    if last is not None and last.exists():
        history.last_checkpoint = last
    if history.best is None or best is None or not best.exists():
        return
    try:
        kept = read_checkpoint(best).get("best") or {}
    except CheckpointError as err:
        logger.warning("%s; it is replaced when an epoch improves on the best", err)
        return
    if kept.get("epoch") == history.best.get("epoch"):
        history.best_checkpoint = best
    else:
        logger.warning(
            "%s holds epoch %s, not the resumed run's best epoch %s; it is replaced when an "
            "epoch improves on the best", best, kept.get("epoch"), history.best.get("epoch"),
        )


def _restore_param_store(state: dict[str, Any]) -> None:
    """Load a saved param store into the live one. Parameters that exist already (the
    optimiser holds them) take the saved values in place: ``set_state`` would replace them
    with new tensors, which the optimiser would never update."""
    store = pyro.get_param_store()
    live = store.get_state()["params"]
    if not set(state["params"]) <= set(live):
        store.set_state(state)
        return
    with torch.no_grad():
        for name, value in state["params"].items():
            live[name].copy_(value.to(live[name].device))


def _rank_rng(payload: dict, rank: int, seed: int) -> dict:
    states = payload.get("rank_rng_states")
    if rank == 0:
        return payload["rng_state"]
    if states is not None and rank < len(states):
        return states[rank]
    from .distributed import rank_seed

    saved = rng_state()
    pyro.set_rng_seed(rank_seed(seed, rank, payload["step"]))
    fresh = rng_state()
    set_rng_state(saved)
    return fresh


def _comparable(stored: dict[str, Any]) -> dict[str, Any]:
    return {k: stored[k] for k in CONFIG_KEYS if k in stored}


def _cpu_rng(state: dict) -> dict:
    out = dict(state)
    out["torch"] = state["torch"].cpu()
    if "cuda" in state:
        out["cuda"] = [s.cpu() for s in state["cuda"]]
    return out
