"""Gradient clipping per value on a *mean* loss, for losses that ``fit`` scales to the data set.

A pyrovae model's data plate scales each minibatch's log-densities by N/M, so ``fit``'s loss
estimates the objective summed over all N examples; its gradient is about N times that of the
mean loss per example. A clip threshold written for a mean loss (SketchRNN clips every
gradient value at 1.0 on its loss averaged over the batch and, per example, over N_max steps)
then never acts as intended: on aaron_sheep the summed loss's gradient norm is ~1e6, so a clip
at 1 rescales every step. [`MeanLossAdam`][] divides the gradient by the factor between the
two losses (``loss_scale``), clips each value, and takes an Adam step on the result: the step
the paper's optimiser takes on its mean loss.

Give it to ``fit`` as its ``optimizer`` (a ``callable(params, lr)``)::

    fit(model, data, optimizer=MeanLossAdam.factory(loss_scale=N * N_max, clip_value=1.0))
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["MeanLossAdam"]


class MeanLossAdam(torch.optim.Adam):
    """Adam on ``gradient / loss_scale``, each value first clipped to ``[-clip_value, clip_value]``.

    Args:
        params: the parameters (or parameter groups).
        lr: learning rate.
        loss_scale: the trained loss divided by the mean loss (for a pyrovae model: N, times
            any normalisation of the mean loss per example, e.g. N * N_max for SketchRNN).
        clip_value: the largest absolute gradient value of the mean loss (default ``None``:
            no clipping, only the division).
        **options: passed on to ``torch.optim.Adam`` (``betas``, ``eps``...).

    Adam itself hardly depends on the scale (up to its ``eps``), so dividing without clipping
    changes little; the division exists so that ``clip_value`` means what it means on the
    mean loss.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        loss_scale: float = 1.0,
        clip_value: float | None = None,
        **options,
    ) -> None:
        if not loss_scale > 0:
            raise ValueError(f"loss_scale must be positive, got {loss_scale}")
        if clip_value is not None and not clip_value > 0:
            raise ValueError(f"clip_value must be positive (or None), got {clip_value}")
        super().__init__(params, lr=lr, **options)
        self.loss_scale = float(loss_scale)
        self.clip_value = None if clip_value is None else float(clip_value)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.grad.div_(self.loss_scale)
                if self.clip_value is not None:
                    p.grad.clamp_(-self.clip_value, self.clip_value)
        return super().step(closure)

    @classmethod
    def factory(cls, loss_scale: float, clip_value: float | None = 1.0, **options):
        """A ``callable(params, lr)`` for ``fit(optimizer=...)``, named by its settings (a
        resumed run compares the optimiser's name with the checkpoint's)."""
        return _Factory(cls, float(loss_scale), clip_value, options)


class _Factory:
    def __init__(self, cls, loss_scale: float, clip_value: float | None, options: dict) -> None:
        self.cls, self.loss_scale, self.clip_value, self.options = (
            cls, loss_scale, clip_value, options
        )

    def __call__(self, params, lr: float) -> MeanLossAdam:
        return self.cls(params, lr, self.loss_scale, self.clip_value, **self.options)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in sorted(self.options.items()))
        return (f"{self.cls.__name__}(loss_scale={self.loss_scale!r}, "
                f"clip_value={self.clip_value!r}{extra})")
