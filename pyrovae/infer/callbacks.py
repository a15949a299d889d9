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


class KLAnnealing:
    """A callback that raises a model's KL weight ``module.kl_weight`` from ``weight * start``
    to ``weight``, after every epoch, for the whole next epoch.

    The weight after an epoch is ``weight * eta`` with ``eta`` rising from ``start`` to 1 in one
    of two shapes (give exactly one of ``epochs`` and ``rate``):

    - linear in epochs (``epochs=E``, as Bowman et al. 2016 anneal): after epoch ``e``
      (counted from 0), ``eta = min(1, start + (1 - start) * (e + 1) / E)``;
    - exponential in steps (``rate=r``, Ha & Eck 2018's ``eta_step``): after the epoch that
      ends at global step ``s``, ``eta = 1 - (1 - start) * r ** s``.

    The module's own initial ``kl_weight`` (a constructor argument of
    [`SketchRNN`][pyrovae.models.sketch_rnn.SketchRNN] and
    [`SMILESVAE`][pyrovae.models.smiles_vae.SMILESVAE]) serves the first epoch: build it with
    ``weight * start``. The weight is a buffer, saved in checkpoints, so a resumed run goes on
    from where it was. Returns ``{"kl_weight_next": w}`` for the epoch's history row.

    Args:
        start: the first epoch's fraction of ``weight``, in (0, 1] (``poutine.scale`` needs a
            positive weight).
        epochs: epochs over which the weight rises linearly (default None).
        rate: per-step decay of the gap to ``weight``, in (0, 1] (default None).
        weight: the final weight (default 1.0: the ELBO), positive.
    """

    def __init__(
        self,
        start: float,
        epochs: int | None = None,
        rate: float | None = None,
        weight: float = 1.0,
    ) -> None:
        if (epochs is None) == (rate is None):
            raise ValueError("give exactly one of epochs (linear) and rate (exponential)")
        if not 0.0 < start <= 1.0:
            raise ValueError(f"start must be in (0, 1], got {start}")
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight}")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int)
                                   or epochs <= 0):
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if rate is not None and not 0.0 < rate <= 1.0:
            raise ValueError(f"rate must be in (0, 1], got {rate}")
        self.start, self.epochs, self.rate, self.weight = start, epochs, rate, weight

    def weight_after(self, info: EpochEnd) -> float:
        """The weight for the epoch after ``info``'s (reads ``info.epoch`` or ``info.step``)."""
        if self.rate is not None:
            return self.weight * (1.0 - (1.0 - self.start) * self.rate**info.step)
        return self.weight * min(1.0, self.start + (1.0 - self.start) * (info.epoch + 1)
                                 / self.epochs)

    def __call__(self, info: EpochEnd) -> dict[str, float]:
        weight = self.weight_after(info)
        info.module.kl_weight.fill_(weight)
        return {"kl_weight_next": weight}
