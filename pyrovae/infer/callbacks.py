"""What [`pyrovae.fit`][] hands to its callbacks and returns, and callbacks any run can use.

Kept apart from the trainer so that evaluation and classification code can build callbacks
without importing the training loop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class History:
    """What [`pyrovae.fit`][] returns: one dict per epoch, the checkpoint paths, the best epoch.

    Each epoch row has ``epoch``, ``steps``, ``loss`` (the mean over the epoch's steps of the
    minibatch estimate of the full-data loss), ``loss_per_example`` (``loss`` divided by the
    number of examples in the largest stream), ``lr``, ``seconds`` and whatever the callbacks
    returned.

    ``configs`` lists every run configuration the run has had, oldest first, each as
    ``{"epoch": e, "step": s, "config": {...}}`` with the epoch and global step it started at:
    one entry, unless a resume changed settings with ``fit(..., allow_config_change=...)``.
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    best: dict[str, Any] | None = None
    configs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def losses(self) -> list[float]:
        return [row["loss"] for row in self.epochs]

    def column(self, key: str) -> list[Any]:
        return [row.get(key) for row in self.epochs]


@dataclass
class EpochEnd:
    """Passed to callbacks at the end of every epoch.

    ``row`` is the epoch's history row as it stands when the callback runs (the loss, the
    learning rate, the seconds and what earlier callbacks added); ``history`` holds the epochs
    before it.
    """

    epoch: int
    step: int
    loss: float
    module: Any
    history: History
    row: dict[str, Any] = field(default_factory=dict)


class TimeBudget:
    """A callback that stops training once ``minutes`` of wall time have passed since it was made.

    The epoch that crosses the budget is finished and checkpointed, so a run resumed with
    ``resume=True`` goes on from there: a long protocol becomes a series of invocations, each
    inside its own budget. ``minutes=None`` or ``inf`` never stops.
    """

    def __init__(self, minutes: float | None) -> None:
        if minutes is not None and not minutes > 0:
            raise ValueError(f"minutes must be positive (or None for no budget), got {minutes}")
        self.minutes = minutes
        self.started = time.perf_counter()

    @property
    def elapsed_minutes(self) -> float:
        return (time.perf_counter() - self.started) / 60.0

    def __call__(self, info: EpochEnd) -> dict[str, Any] | None:
        if self.minutes is None or self.elapsed_minutes < self.minutes:
            return None
        logger.info("time budget of %.3g min used after epoch %d", self.minutes, info.epoch)
        return {"stop": True}
