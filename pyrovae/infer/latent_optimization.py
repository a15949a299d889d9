"""Optimisation in a VAE's latent space (Gómez-Bombarelli et al. 2018): search z, decode, score.

The recipe, for any model with an encoder and a decoder (the SMILES VAE first of all)::

    codes z_i = loc(q(z | x_i)) of training examples, with their property values y_i
    fit a small network f(z) ~ y                               (fit_property_predictor)
    from the codes of the best training examples, climb f by gradient ascent in z, with a
    pull towards the prior's typical set: maximise f(z) - prior_weight * |z|^2 / 2
    decode the points along every path, score the outputs with the true property
                                                                 (optimize_latent)

The predictor is only a guide: every reported value is the true property of a decoded output
(e.g. RDKit's QED of a decoded SMILES string), so a predictor that extrapolates badly wastes
decodes but cannot inflate the result. ``decodes`` counts every decoded point, the budget to
compare against, e.g. as many random prior draws ([`random_search`][]).

References:
    R. Gómez-Bombarelli, J. N. Wei, D. Duvenaud et al. Automatic chemical design using a
    data-driven continuous representation of molecules. ACS Central Science 4, 268–276, 2018.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "LatentSearch",
    "PropertyPredictor",
    "ascend",
    "fit_property_predictor",
    "optimize_latent",
    "random_search",
]

logger = logging.getLogger(__name__)


class PropertyPredictor(nn.Module):
    """``f(z) = MLP(z)``, a scalar per code, with the targets' standardisation built in.

    Args:
        latent_dim: K.
        hidden_size: width of its two hidden layers (default 64).
    """

    def __init__(self, latent_dim: int, hidden_size: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden_size), nn.Tanh(),
            nn.Linear(hidden_size, hidden_size), nn.Tanh(),
            nn.Linear(hidden_size, 1),
        )
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))

    def forward(self, z: Tensor) -> Tensor:
        """Predicted property [...] of codes ``z`` [..., K], in the property's units."""
        return self.net(z).squeeze(-1) * self.y_std + self.y_mean


def fit_property_predictor(
    z: Tensor,
    y: Tensor,
    hidden_size: int = 64,
    epochs: int = 300,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    validation: float = 0.1,
    seed: int = 0,
) -> tuple[PropertyPredictor, dict[str, float]]:
    """Fit a [`PropertyPredictor`][] to codes ``z`` [N, K] and values ``y`` [N] (full-batch Adam).

    Rows with a non-finite ``y`` are dropped. A random ``validation`` fraction is held out; the
    returned predictor is the one of the epoch with the lowest validation error (early
    stopping), and the metrics are measured there: ``{"validation_rmse", "validation_r2",
    "train_size", "validation_size", "best_epoch"}`` (R^2 = 1 - MSE / Var(y)).
    """
    keep = torch.isfinite(y)
    z, y = z[keep].detach(), y[keep].detach().to(z.dtype)
    if z.shape[0] < 10:
        raise ValueError(f"need at least 10 examples with finite values, got {z.shape[0]}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(z.shape[0], generator=generator).to(z.device)
    n_val = max(1, int(validation * z.shape[0]))
    val, train = order[:n_val], order[n_val:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        predictor = PropertyPredictor(z.shape[1], hidden_size).to(z)
    predictor.y_mean.fill_(float(y[train].mean()))
    predictor.y_std.fill_(float(y[train].std()) or 1.0)
    optimizer = torch.optim.Adam(predictor.parameters(), lr=lr, weight_decay=weight_decay)

    def validation_mse() -> float:
        with torch.no_grad():
            return float((predictor(z[val]) - y[val]).square().mean())

    # early stopping on the held-out rows: a predictor that overfits the codes sends the
    # ascent far outside them, where its values mean nothing
    best_mse, best_state, best_epoch = validation_mse(), copy.deepcopy(predictor.state_dict()), 0
    for epoch in range(1, epochs + 1):
        optimizer.zero_grad()
        error = (predictor(z[train]) - y[train]) / predictor.y_std
        error.square().mean().backward()
        optimizer.step()
        mse = validation_mse()
        if mse < best_mse:
            best_mse, best_state, best_epoch = mse, copy.deepcopy(predictor.state_dict()), epoch
    predictor.load_state_dict(best_state)
    predictor.eval()
    variance = float(y[val].var()) if n_val > 1 else float("nan")
    metrics = {"validation_rmse": math.sqrt(best_mse), "validation_r2": 1 - best_mse / variance,
               "train_size": int(train.numel()), "validation_size": n_val,
               "best_epoch": best_epoch}
    logger.info("property predictor: %s", metrics)
    return predictor, metrics


def ascend(
    predictor: Callable[[Tensor], Tensor],
    z0: Tensor,
    steps: int = 100,
    lr: float = 0.05,
    prior_weight: float = 0.1,
    record_every: int = 10,
) -> Tensor:
    """Gradient ascent on ``predictor(z) - prior_weight * |z|^2 / 2`` from each row of ``z0``.

    Adam (``lr``) on every path at once; the paths do not interact. Returns the points
    ``[R, n, K]`` after steps ``record_every, 2 * record_every, ..., steps`` (R of them).
    """
    if steps < 1 or record_every < 1:
        raise ValueError(f"steps and record_every must be positive, got {steps}, {record_every}")
    z = z0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    recorded = []
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        objective = predictor(z) - 0.5 * prior_weight * z.square().sum(-1)
        (-objective.sum()).backward()
        optimizer.step()
        if step % record_every == 0:
            recorded.append(z.detach().clone())
    return torch.stack(recorded)


@dataclass
class LatentSearch:
    """What a search found: every decoded output with its true score, and the budget spent.

    ``outputs``/``scores`` hold one entry per decode (duplicates included; NaN for an invalid
    output); `best` and `top` look at distinct valid outputs.
    """

    outputs: list[str]
    scores: np.ndarray
    decodes: int
    extra: dict = field(default_factory=dict)

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` best distinct outputs with finite scores, best first."""
        best: dict[str, float] = {}
        for output, score in zip(self.outputs, self.scores, strict=True):
            if np.isfinite(score) and score > best.get(output, -np.inf):
                best[output] = float(score)
        return sorted(best.items(), key=lambda item: -item[1])[:k]

    def best(self) -> tuple[str, float] | None:
        found = self.top(1)
        return found[0] if found else None

    def summary(self, k: int = 10) -> dict:
        top = self.top(k)
        valid = np.isfinite(self.scores)
        return {
            "decodes": self.decodes,
            "valid_fraction": float(valid.mean()) if len(valid) else 0.0,
            "distinct_valid": len(self.top(len(self.outputs))),
            "best": top[0][1] if top else None,
            "best_output": top[0][0] if top else None,
            f"top{k}_mean": float(np.mean([s for _, s in top])) if top else None,
            f"top{k}": top,
            **self.extra,
        }


def _decode_and_score(decode, score, z: Tensor, batch_size: int) -> tuple[list[str], np.ndarray]:
    outputs: list[str] = []
    for start in range(0, z.shape[0], batch_size):
        outputs += list(decode(z[start:start + batch_size]))
    return outputs, np.asarray(score(outputs), dtype=float)


def optimize_latent(
    decode: Callable[[Tensor], Sequence[str]],
    score: Callable[[Sequence[str]], np.ndarray],
    predictor: Callable[[Tensor], Tensor],
    z_start: Tensor,
    steps: int = 100,
    lr: float = 0.05,
    prior_weight: float = 0.1,
    record_every: int = 10,
    batch_size: int = 500,
) -> LatentSearch:
    """[`ascend`][] from every row of ``z_start``, then decode and score every recorded point.

    Args:
        decode: ``decode(z [n, K]) -> n outputs`` (e.g. greedy SMILES decoding).
        score: ``score(outputs) -> [n]`` true property values, NaN for invalid outputs.
        predictor: the surrogate to climb (e.g. from [`fit_property_predictor`][]).
        z_start: [n, K] starting codes (e.g. of the best training examples).
        steps: ascent steps (see [`ascend`][]).
        lr: step size (see [`ascend`][]).
        prior_weight: pull towards the prior (see [`ascend`][]).
        record_every: steps between recorded points (see [`ascend`][]).
        batch_size: codes decoded at once.

    Returns:
        A [`LatentSearch`][] with ``decodes = n * steps // record_every``.
    """
    path = ascend(predictor, z_start, steps, lr, prior_weight, record_every)
    flat = path.reshape(-1, path.shape[-1])
    with torch.no_grad():
        predicted = predictor(flat)
    outputs, scores = _decode_and_score(decode, score, flat, batch_size)
    extra = {"paths": int(path.shape[1]), "points_per_path": int(path.shape[0]),
             "predicted_mean_last": float(predicted.reshape(path.shape[:2])[-1].mean())}
    return LatentSearch(outputs, scores, len(outputs), extra)


def random_search(
    decode: Callable[[Tensor], Sequence[str]],
    score: Callable[[Sequence[str]], np.ndarray],
    latent_dim: int,
    decodes: int,
    seed: int = 0,
    batch_size: int = 500,
    like: Tensor | None = None,
) -> LatentSearch:
    """The baseline at the same budget: ``decodes`` codes ``z ~ N(0, I)``, decoded and scored."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(decodes, latent_dim, generator=generator)
    if like is not None:
        z = z.to(like)
    outputs, scores = _decode_and_score(decode, score, z, batch_size)
    return LatentSearch(outputs, scores, len(outputs))
