"""Burda et al.'s training schedule for ``fit``: the staged learning rate, compressed, and Adam.

Burda, Grosse and Salakhutdinov (2016) train for 3280 epochs in eight stages: stage i = 0..7 lasts
``3^i`` epochs at learning rate ``1e-3 * 10^(-i/7)``, with Adam (``eps = 1e-4``) and batches of
20. [`BurdaSchedule`][] is that schedule as ``fit``'s ``lr_schedule`` (a factor per epoch, times
``lr = 1e-3``), for the full 3280 epochs or compressed into fewer: every stage keeps its share
``3^i / 3280`` of the epochs (at least one epoch each), so the shape survives at a fraction of the
updates. [`burda_adam`][] is their optimiser as ``fit``'s ``optimizer``.

Reference:
    Y. Burda, R. Grosse and R. Salakhutdinov. Importance weighted autoencoders. ICLR 2016.
"""

from __future__ import annotations

import bisect
import itertools

import torch

from .options import _fusable

BURDA_STAGES = 8
BURDA_EPOCHS = sum(3**i for i in range(BURDA_STAGES))  # 3280


class BurdaSchedule:
    """Learning-rate factor ``10^(-i/7)`` in stage i; stage i lasts ``3^i`` epochs, scaled.

    With ``epochs = E`` stage i lasts ``L_i = max(1, round(3^i * E / 3280))`` epochs for
    i < 7, and the last stage takes the rest, ``E - sum_{i<7} L_i``, so the stages fill exactly E
    epochs (for E close to 8, where the rounding leaves the last stage nothing, the longest
    earlier stages give up an epoch each until it has one). At E = 3280 this is Burda et al.'s
    schedule epoch for epoch. Epochs past E stay in the last stage. Use it as
    ``fit(..., lr=1e-3, lr_schedule=BurdaSchedule(E), epochs=E)``; its ``repr`` names E, so a
    resumed run checks that the schedule is the same.

    ``stages="even"`` keeps the eight rates but gives each stage an eighth of the epochs (the
    first ``E mod 8`` stages one more): a short budget then spends most of its updates above the
    last stage's rate, where the paper's shares put two thirds of them at 1e-4.

    Args:
        epochs: E, the epochs the eight stages fill (default 3280, the paper's); at least 8.
        stages: ``"burda"`` (stage i's share ``3^i / 3280``) or ``"even"`` (``E / 8`` each).
    """

    def __init__(self, epochs: int = BURDA_EPOCHS, stages: str = "burda") -> None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < BURDA_STAGES:
            raise ValueError(f"epochs must be an integer >= {BURDA_STAGES}, got {epochs!r}")
        if stages not in ("burda", "even"):
            raise ValueError(f"stages must be 'burda' or 'even', got {stages!r}")
        self.epochs = epochs
        self.stages = stages
        self.stage_lengths = _even_lengths(epochs) if stages == "even" else _burda_lengths(epochs)
        # The first epoch of every stage after the first.
        self._starts = list(itertools.accumulate(self.stage_lengths))[:-1]

    def stage(self, epoch: int) -> int:
        """The stage (0..7) of epoch ``epoch`` (counted from 0)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        return bisect.bisect_right(self._starts, epoch)

    def __call__(self, epoch: int) -> float:
        return 10.0 ** (-self.stage(epoch) / 7.0)

    def __repr__(self) -> str:
        # The paper's shares keep their old repr, so runs saved before "even" existed resume.
        stages = "" if self.stages == "burda" else f", stages={self.stages!r}"
        return f"BurdaSchedule(epochs={self.epochs}{stages})"


def _burda_lengths(epochs: int) -> list[int]:
    """Stage i's share ``3^i / 3280`` of ``epochs`` (at least one each), the last the rest."""
    lengths = [max(1, round(3**i * epochs / BURDA_EPOCHS)) for i in range(BURDA_STAGES - 1)]
    while sum(lengths) >= epochs:  # only for E near 8: the last stage needs an epoch too
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        lengths[longest] -= 1
    return [*lengths, epochs - sum(lengths)]


def _even_lengths(epochs: int) -> list[int]:
    """An eighth of ``epochs`` per stage, the first ``epochs mod 8`` stages one more."""
    share, extra = divmod(epochs, BURDA_STAGES)
    return [share + (i < extra) for i in range(BURDA_STAGES)]


def burda_adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam with ``eps = 1e-4`` (Burda et al.'s setting; PyTorch's default is 1e-8), fused
    where the parameters allow, as ``fit``'s ``"adam"``. Pass it as ``fit(optimizer=burda_adam)``.
    """
    return torch.optim.Adam(params, lr=lr, eps=1e-4, fused=_fusable(params) or None)
