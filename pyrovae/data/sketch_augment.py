"""Noise for sketch-rnn's integer offsets: the paper's random scaling and uniform dequantisation.

The offsets of the sketch-rnn data sets are integers in pixels, divided by the training scale
``s`` (`pyrovae.data.sketches`). A continuous density on them can then put narrow spikes on the
lattice ``Z / s`` and drive its log-density, and so the loss, without bound while learning
nothing about shapes. Two remedies, both functions of ``(seed, epoch)`` only so that a resumed
run sees exactly the data an uninterrupted one would:

- **Dequantisation** (Theis, van den Oord & Bethge 2016): every point's offsets get
  ``u / s`` with ``u ~ U[-1/2, 1/2)^2``, one pixel's width. For any density ``p`` on the
  normalised offsets, Jensen's inequality over the pixel cell ``C_k`` of an integer ``k`` gives
  ``log P(k) = log int_{C_k} p(y) dy >= E_u[log p((k + u) / s)] - 2 log s``: the dequantised
  log-density is a lower bound on the log-probability of the integer data, which is at most 0,
  so it cannot be made arbitrarily good, and a spike on ``k`` only loses the rest of the cell.
- **Random scaling** (Ha & Eck 2018, ``random_scale_factor``; 0.15 in their code): every
  sketch's ``dx`` and ``dy`` are multiplied by two independent factors uniform in
  ``[1 - r, 1 + r)``, fresh every epoch.

With both, the points are dequantised first and then scaled, i.e. a continuous drawing is
stretched. Rows at or after a sketch's length (the end rows) are left as they are.

References:
    L. Theis, A. van den Oord and M. Bethge. A note on the evaluation of generative models.
    ICLR 2016.
    D. Ha and D. Eck. A neural representation of sketch drawings. ICLR 2018.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .transforms import mixed_seed

__all__ = ["AugmentedSketches", "dequantization_noise", "dequantized", "random_scale_factors"]

# keeps these draws apart from the binarisation and batch seeds derived from the same run seed
_TRAIN_TAG, _TEST_TAG = 0x5CE7C4, 0x7E57


def _generator(*words: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(mixed_seed(*words) & (2**63 - 1))


def _points(lengths: Tensor, num_steps: int) -> Tensor:
    """``[N, T, 1]``: True at the rows ``t < L_n`` (a sketch's points)."""
    steps = torch.arange(num_steps, device=lengths.device)
    return (steps < lengths.unsqueeze(-1)).unsqueeze(-1)


def random_scale_factors(num: int, r: float, generator: torch.Generator) -> Tensor:
    """``[num, 2]`` CPU float64 factors uniform in ``[1 - r, 1 + r)``, independent per axis."""
    if not 0 <= r < 1:
        raise ValueError(f"the random scale r must be in [0, 1), got {r}")
    return 1.0 + r * (2.0 * torch.rand(num, 2, generator=generator, dtype=torch.float64) - 1.0)


def dequantization_noise(
    lengths: Tensor, num_steps: int, scale: float, generator: torch.Generator
) -> Tensor:
    """``[N, T, 2]`` CPU float64 noise ``u / scale`` with ``u ~ U[-1/2, 1/2)`` at a sketch's
    points (``t < L_n``) and 0 at the other rows."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    u = torch.rand(len(lengths), num_steps, 2, generator=generator, dtype=torch.float64) - 0.5
    return torch.where(_points(lengths.cpu(), num_steps), u / scale, 0.0)


def dequantized(x: Tensor, lengths: Tensor, scale: float, seed: int) -> Tensor:
    """Test sketches ``x`` [N, T, 5] with their offsets dequantised by the noise of ``seed``
    (the same noise for the same seed, sketches and shapes); a new tensor on ``x``'s device."""
    noise = dequantization_noise(lengths, x.shape[1], scale, _generator(seed, _TEST_TAG))
    out = x.clone()
    out[..., :2] += noise.to(device=x.device, dtype=x.dtype)
    return out


class AugmentedSketches:
    """A training stream of sketches with fresh random scaling and dequantisation every epoch.

    [`fit`][pyrovae.fit] calls ``for_epoch(epoch)`` once per epoch and indexes its batches
    from the result; every sketch is in one batch of an epoch, so its noise is fresh in every
    batch it appears in. ``for_epoch`` depends only on ``(seed, epoch)``.

    Args:
        x: stroke-5 sketches ``[N, T, 5]``, offsets divided by ``scale``.
        lengths: ``[N]`` points per sketch.
        scale: the offset scale ``s`` the integer pixel offsets were divided by.
        random_scale: r, the paper's ``random_scale_factor`` (0: no scaling).
        dequantize: add ``U[-1/2, 1/2)`` pixels to each offset.
        seed: the run's seed.
    """

    def __init__(self, x: Tensor, lengths: Tensor, scale: float, *, random_scale: float = 0.0,
                 dequantize: bool = False, seed: int = 0) -> None:
        if x.dim() != 3 or x.shape[-1] != 5 or lengths.shape != x.shape[:1]:
            raise ValueError(f"x must be [N, T, 5] with lengths [N], got {list(x.shape)} and "
                             f"{list(lengths.shape)}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        random_scale_factors(0, random_scale, torch.Generator())  # checks r
        self.x, self.lengths, self.scale = x, lengths, float(scale)
        self.random_scale, self.dequantize, self.seed = float(random_scale), bool(dequantize), seed

    def __len__(self) -> int:
        return self.x.shape[0]

    def for_epoch(self, epoch: int) -> tuple[Tensor, Tensor]:
        """``(x_epoch, lengths)``: epoch ``epoch``'s noisy copy of the sketches."""
        generator = _generator(self.seed, epoch, _TRAIN_TAG)
        offsets = self.x[..., :2].double().cpu()
        if self.dequantize:
            offsets = offsets + dequantization_noise(self.lengths, self.x.shape[1], self.scale,
                                                     generator)
        if self.random_scale > 0:
            offsets = offsets * random_scale_factors(len(self), self.random_scale,
                                                     generator).unsqueeze(1)
        out = self.x.clone()
        out[..., :2] = offsets.to(device=self.x.device, dtype=self.x.dtype)
        return out, self.lengths

    def __repr__(self) -> str:
        return (f"AugmentedSketches(x={tuple(self.x.shape)}, scale={self.scale:.4g}, "
                f"random_scale={self.random_scale}, dequantize={self.dequantize}, "
                f"seed={self.seed})")
