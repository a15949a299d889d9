"""A run's CPU time: recorded after every epoch, and a budget that stops training once it is spent.

Two runs on a shared machine get different shares of it, so wall time is no measure of the
compute a run had; the CPU time of the training process is (``time.process_time``: every thread
of the process, user and system). Matching two models' CPU time (the SMILES VAE and its
language-model baseline, issue 24) is then one number: the first run's final ``cpu_seconds``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pyrovae.infer.callbacks import EpochEnd

logger = logging.getLogger(__name__)

#: The history column: CPU seconds of training so far, earlier invocations included.
CPU_SECONDS = "cpu_seconds"


class CpuBudget:
    """A ``fit`` callback: ``{"cpu_seconds": s}`` in every epoch's row, ``s`` the CPU seconds the
    run has trained for (this invocation's since the callback was made, plus the last value in
    the history of a resumed run), and ``{"stop": True}`` once ``s >= 60 * minutes``.

    As with [`TimeBudget`][pyrovae.infer.callbacks.TimeBudget], the epoch that crosses the
    budget is finished and checkpointed, so a run overshoots by less than one epoch (report the
    final ``cpu_seconds``, not the budget). A resumed run that had already spent its budget
    stops after one more epoch. The steps of an epoch interrupted before its end (a mid-epoch
    checkpoint) are kept but their CPU time is not counted.

    Args:
        minutes: the budget in CPU-minutes (default None: record only).
        clock: the CPU clock in seconds (default ``time.process_time``).
    """

    def __init__(self, minutes: float | None = None,
                 clock: Callable[[], float] = time.process_time) -> None:
        if minutes is not None and not minutes > 0:
            raise ValueError(f"minutes must be positive (or None for no budget), got {minutes}")
        self.minutes, self.clock = minutes, clock
        self.started = clock()
        self.earlier: float | None = None  # CPU seconds of earlier invocations, read once

    def __call__(self, info: EpochEnd) -> dict[str, Any]:
        if self.earlier is None:
            rows = info.history.epochs
            self.earlier = float(rows[-1].get(CPU_SECONDS) or 0.0) if rows else 0.0
        spent = self.earlier + (self.clock() - self.started)
        result: dict[str, Any] = {CPU_SECONDS: spent}
        if self.minutes is not None and spent >= 60.0 * self.minutes:
            logger.info("CPU budget of %.3g min used after epoch %d (%.1f CPU-s)",
                        self.minutes, info.epoch, spent)
            result["stop"] = True
        return result
