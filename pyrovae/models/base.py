"""Pieces every pyrovae model shares: the data plate and a rebuildable configuration."""

from __future__ import annotations

from typing import Any

import pyro
import torch
from pyro.nn import PyroModule


def data_plate(x: torch.Tensor, subsample: torch.Tensor | None = None, name: str = "data"):
    """A ``pyro.plate`` over the rows of ``x`` at ``dim=-1``.

    With ``subsample`` (a LongTensor of row indices, length M) the plate has ``size=N`` and
    ``subsample=subsample``, so every site inside it is scaled by N/M: the minibatch estimate of
    the full-data objective is unbiased.
    """
    return pyro.plate(name, size=x.shape[0], subsample=subsample, dim=-1)


def take(x: torch.Tensor | None, subsample: torch.Tensor | None) -> torch.Tensor | None:
    """Rows ``subsample`` of ``x`` (all of ``x`` when ``subsample`` is None)."""
    if x is None or subsample is None:
        return x
    return x.index_select(0, subsample)


def check_data(x: torch.Tensor, data_dim: int, what: str = "x") -> None:
    """Raise a ``ValueError`` naming the problem if ``x`` is not a finite float [N, data_dim]."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 2 or x.shape[1] != data_dim:
        raise ValueError(f"{what} must have shape [N, {data_dim}], got {list(x.shape)}")


def check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class ConfigurableModule(PyroModule):
    """A ``PyroModule`` that remembers the keyword arguments that built it.

    ``config`` is stored in checkpoints, so :func:`pyrovae.load_checkpoint` can rebuild the model
    as ``type(model)(**config)`` and load its weights.
    """

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.config = dict(config)
