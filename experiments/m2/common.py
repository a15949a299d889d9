"""Helpers for the M2 experiments: time-budgeted training with a metrics file per run.

The data, the model (through its preset), the training loop and the metrics come from the run layer
(``pyrovae.runs.m2``), which ``pyrovae m2`` shares. Not a script: the modules of
``experiments.m2`` import it; their smoke tests cover it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

import pyrovae
from pyrovae.data.streams import SemiSupervisedData
from pyrovae.infer.classification import accuracy
from pyrovae.models.m2 import M2
from pyrovae.runs import m2 as m2_family
from pyrovae.runs.provenance import evaluates, is_main, write_json


def train_m2(
    model: M2, data: SemiSupervisedData, out: Path, options: dict[str, Any], *,
    device: torch.device, info: dict, minutes: float | None = None, test_curve: bool = False,
    test_when_stopped: bool = True,
) -> dict:
    """The run layer's M2 training loop (``pyrovae.runs.m2.train``, resumed from
    ``out/last.pt`` when there is one) for ``options``' epochs or until ``minutes`` have passed,
    writing ``out/metrics.json`` (``info`` and the curve) after every epoch; then the
    validation-selected model (``best.pt``) on the test set. Returns the metrics.

    The test set is read once, by the selected model at the end, unless ``test_curve`` (a
    diagnostic) records the current model's test error every epoch too. With
    ``test_when_stopped=False`` an invocation stopped by the budget before the last epoch does
    not read the test set at all (a run resumed in many invocations then reads it once). Only
    where ``pyrovae.runs.provenance.evaluates`` (rank 0) is the test set read.
    """
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.perf_counter(), time.process_time()
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
            # user + system time of every thread of this process (this invocation)
            cpu_seconds=time.process_time() - cpu_started,
            curve=[*state.history.epochs, row],
            best_epoch=best["epoch"],
            best_val_accuracy=best["val_accuracy"],
        )
        # fit logs the epoch's line (loss, val_accuracy, lr, seconds): no second copy here
        write_json(out / "metrics.json", metrics)

    history, _ = m2_family.train(
        model, data, options, device=device, out=out, resume=True, minutes=minutes,
        callbacks=[test_callback] if test_curve else [], on_epoch=report, config=info,
    )
    done, epochs = len(history.epochs), m2_family.resolve(options)["epochs"]
    metrics.update(
        epochs_done=done, curve=history.epochs, best_epoch=history.best["epoch"],
        best_val_accuracy=history.best["val_accuracy"],
        status=(f"finished {epochs} epochs" if done >= epochs
                else f"stopped by the time budget ({minutes} min) after {done}"),
    )
    if evaluates() and (done >= epochs or test_when_stopped):  # rank 0 tests
        best = pyrovae.load_checkpoint(out / "best.pt", map_location=data.x_test.device)
        metrics["test_error"] = m2_family.test_error(best, data.x_test, data.y_test)
        metrics["time_to_best_seconds"] = sum(
            row["seconds"] for row in metrics["curve"][: metrics["best_epoch"] + 1])
    write_json(out / "metrics.json", metrics)  # on rank 0 only
    return metrics
