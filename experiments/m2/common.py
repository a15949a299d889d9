"""Helpers for the M2 experiments: time-budgeted training with a metrics file per run.

The data, the model (through its preset) and the metrics come from the run layer
(``pyrovae.runs.m2``), which ``pyrovae m2`` shares. Not a script: the modules of
``experiments.m2`` import it; their smoke tests cover it.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

import pyrovae
from pyrovae.data.streams import SemiSupervisedData
from pyrovae.infer import TimeBudget
from pyrovae.infer.classification import accuracy, validation_callback
from pyrovae.models.m2 import M2
from pyrovae.runs.m2 import AdamWithBetas, test_error
from pyrovae.runs.provenance import evaluates, is_main, write_json

logger = logging.getLogger("m2")


def train_m2(
    model: M2,
    data: SemiSupervisedData,
    out: Path,
    *,
    max_epochs: int,
    max_minutes: float,
    batch_size: int,
    labelled_batch_size: int,
    lr: float,
    lr_decay: float,
    seed: int,
    jit: bool,
    info: dict,
    device: torch.device | str | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    test_curve: bool = False,
    test_when_stopped: bool = True,
    parallel: dict | None = None,
) -> dict:
    """One ``pyrovae.fit`` (resumed from ``out/last.pt`` when there is one) for ``max_epochs``
    epochs or until ``TimeBudget(max_minutes)`` stops it, writing ``out/metrics.json`` after
    every epoch; report the validation-selected model (``best.pt``) on the test set.

    The epoch that crosses the budget is finished; a later invocation with the same ``out``
    goes on from there. The test set is read once, by the selected model at the end, unless
    ``test_curve`` (a diagnostic) records the current model's test error every epoch too.
    Adam's ``betas`` other than torch's default ``(0.9, 0.999)`` use :class:`AdamWithBetas`.
    With ``test_when_stopped=False`` an invocation stopped by the budget before ``max_epochs``
    does not read the test set at all (a run resumed in many invocations then reads it once).
    Only where ``pyrovae.runs.provenance.evaluates`` (rank 0) is the test set read.
    ``parallel``: ``fit``'s ``devices`` and ``num_nodes`` (``runs.launch.parallel_options``).
    """
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
    streams = {"unlabelled": data.unlabelled, "labelled": data.labelled}
    sizes = {"unlabelled": batch_size, "labelled": labelled_batch_size}
    started = time.perf_counter()
    metrics: dict[str, Any] = dict(info, status="running")

    def test_callback(state):
        # Recorded for the learning curve only; never used to select the model.
        return {"test_error_current": 1.0 - accuracy(state.module.classify, data.x_test,
                                                     data.y_test)}

    def report(state) -> None:
        row, best = state.row, state.history.best
        if best is None or row["val_accuracy"] > best["val_accuracy"]:
            best = row
        metrics.update(
            epochs_done=len(state.history.epochs) + 1,
            wall_seconds=time.perf_counter() - started,
            curve=[*state.history.epochs, row],
            best_epoch=best["epoch"],
            best_val_accuracy=best["val_accuracy"],
        )
        write_json(out / "metrics.json", metrics)
        logger.info("epoch %d: loss/example %.2f, val acc %.4f, %.1f s", row["epoch"],
                    row["loss_per_example"], row["val_accuracy"], row["seconds"])

    callbacks = [validation_callback(data.x_val, data.y_val)]
    if test_curve:
        callbacks.append(test_callback)
    optimizer = "adam" if tuple(betas) == (0.9, 0.999) else AdamWithBetas(betas)
    history = pyrovae.fit(
        model, streams, objective="enum", jit=jit, lr=lr, optimizer=optimizer,
        lr_schedule=f"exponential:{lr_decay}" if lr_decay != 1 else None,
        epochs=max_epochs, batch_size=sizes, seed=seed, device=device,
        callbacks=[*callbacks, report, TimeBudget(max_minutes)],
        checkpoint_dir=out, resume=True, select_metric="val_accuracy", config=info,
        **(parallel or {}),
    )
    done = len(history.epochs)
    metrics.update(
        epochs_done=done, curve=history.epochs, best_epoch=history.best["epoch"],
        best_val_accuracy=history.best["val_accuracy"],
        status=(f"finished {max_epochs} epochs" if done >= max_epochs
                else f"stopped by the time budget ({max_minutes} min) after {done}"),
    )
    if not evaluates():
        return metrics  # without a test error: rank 0 tests
    if done < max_epochs and not test_when_stopped:
        metrics.pop("test_error", None)
        write_json(out / "metrics.json", metrics)
        return metrics
    best = pyrovae.load_checkpoint(out / "best.pt", map_location=data.x_test.device)
    metrics["test_error"] = test_error(best, data.x_test, data.y_test)
    metrics["time_to_best_seconds"] = sum(
        row["seconds"] for row in metrics["curve"][: metrics["best_epoch"] + 1]
    )
    write_json(out / "metrics.json", metrics)
    return metrics


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)
