"""Finishing a drawing with a trained SketchRNN: condition the decoder on a sketch's first strokes.

The paper's "finish my drawing" (Ha & Eck 2018, section 5): the decoder reads the rows of an
incomplete sketch as if it had drawn them (teacher forcing, the same computation as training),
and from the state it reaches draws the rest, one stroke-5 row at a time, at a temperature tau.
The latent code comes from one of three places:

- ``latent="encode"``: the guide's mean for the partial sketch itself, ``loc(q(z | prefix))``:
  the code of "a sketch that starts like this" (the encoder saw only complete sketches, so
  this is an extrapolation of the guide);
- ``latent="prior"``: a fresh ``z ~ N(0, I)`` per completion: the prefix alone steers;
- a tensor ``z`` [K] or [n, K]: any code, e.g. another sketch's, to finish the drawing "in its
  style".

Usage::

    prefix = first_strokes(x[0], lengths[0], num_strokes=2)          # [L, 5]
    drawn, drawn_lengths = complete_sketch(model, prefix, num_samples=8, temperature=0.3)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pyrovae.models.base import check_positive_int
from pyrovae.models.sketch_rnn import END, START, SketchRNN

__all__ = ["complete_sketch", "first_strokes"]


def first_strokes(x: Tensor, length: int | Tensor, num_strokes: int) -> Tensor:
    """The rows [L, 5] of the first ``num_strokes`` strokes of one stroke-5 sketch ``x`` [T, 5].

    A stroke ends at a row whose pen lifts (``p2 = 1``); the prefix keeps that row. With fewer
    strokes than ``num_strokes`` the whole sketch (its ``length`` rows) is returned.
    """
    check_positive_int(num_strokes, "num_strokes")
    length = int(length)
    lifts = torch.nonzero(x[:length, 3] > 0.5).flatten()
    end = length if len(lifts) < num_strokes else int(lifts[num_strokes - 1]) + 1
    return x[:end]


def _codes(model: SketchRNN, prefix: Tensor, latent, n: int, generator) -> Tensor:
    like = model.head.weight
    if isinstance(latent, Tensor):
        z = latent.to(like)
        z = z.expand(n, -1) if z.dim() == 1 else z
        if z.shape != (n, model.latent_dim):
            raise ValueError(f"z must have shape [{model.latent_dim}] or [{n}, "
                             f"{model.latent_dim}], got {list(latent.shape)}")
        return z
    if latent == "encode":
        lengths = torch.tensor([prefix.shape[0]], device=prefix.device)
        end = prefix.new_tensor(END).expand(1, 1, 5)  # the end row a complete sketch would have
        loc, _ = model.encode(torch.cat([prefix.unsqueeze(0), end], dim=1), lengths)
        return loc.expand(n, -1)
    if latent == "prior":
        return torch.randn(n, model.latent_dim, generator=generator, device=like.device,
                           dtype=like.dtype)
    raise ValueError(f"latent must be 'encode', 'prior' or a tensor, got {latent!r}")


@torch.no_grad()
def complete_sketch(
    model: SketchRNN,
    prefix: Tensor,
    latent: str | Tensor = "encode",
    num_samples: int = 1,
    temperature: float = 1.0,
    max_length: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``num_samples`` completions of the partial sketch ``prefix`` [L, 5] (stroke-5 rows, in
    the model's normalised units, no end row).

    Args:
        model: a trained SketchRNN (used in eval mode; its mode is left as it was).
        prefix: the rows drawn so far, L >= 1.
        latent: ``"encode"`` (default), ``"prior"`` or a code tensor (module docstring).
        num_samples: completions drawn (default 1).
        temperature: tau of the mixture and pen distributions (default 1.0).
        max_length: most rows of a whole sketch, prefix included (default the model's N_max).
        generator: for the draws (default torch's global RNG); on the model's device.

    Returns:
        ``(x [n, T, 5], lengths [n])``: each sketch starts with the L prefix rows; rows after
        its end are end rows. A completion stops when it draws the end state, or at
        ``max_length`` rows.
    """
    check_positive_int(num_samples, "num_samples")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if prefix.dim() != 2 or prefix.shape[-1] != 5 or prefix.shape[0] < 1:
        raise ValueError(f"prefix must have shape [L >= 1, 5], got {list(prefix.shape)}")
    steps = model.max_length if max_length is None else max_length
    if steps <= prefix.shape[0]:
        raise ValueError(f"max_length {steps} leaves no room after {prefix.shape[0]} rows")
    was_training = model.training
    model.eval()
    try:
        n = num_samples
        prefix = prefix.to(model.head.weight)
        z = _codes(model, prefix, latent, n, generator)
        # teacher forcing over the prefix: the decoder reads START, row 0, .., row L-2 and its
        # state then predicts row L-1; reading row L-1 as well, it predicts the first new row
        rows = prefix.unsqueeze(0).expand(n, -1, -1)
        start = prefix.new_tensor(START).expand(n, 1, 5)
        read = torch.cat([start, rows[:, :-1]], dim=1)
        inputs = torch.cat([read, z.unsqueeze(1).expand(-1, read.shape[1], -1)], dim=-1)
        _, state = model.decoder_rnn(inputs, model._initial_state(z))
        previous = rows[:, -1]
        drawn = []
        done = torch.zeros(n, dtype=torch.bool, device=z.device)
        lengths = torch.full((n,), steps, dtype=torch.long, device=z.device)
        for t in range(prefix.shape[0], steps):
            hidden, state = model.decoder_rnn(torch.cat([previous, z], -1).unsqueeze(1), state)
            row = _draw_row(model, model.head(hidden.squeeze(1)), temperature, generator)
            ended = row[:, 4].bool() & ~done
            lengths = torch.where(ended, torch.full_like(lengths, t), lengths)
            done = done | ended
            drawn.append(torch.where(done.unsqueeze(-1), z.new_tensor(END), row))
            previous = drawn[-1]
            if bool(done.all()):
                break
        return torch.cat([rows, torch.stack(drawn, dim=1)], dim=1), lengths
    finally:
        model.train(was_training)


def _draw_row(model: SketchRNN, out: Tensor, temperature: float, generator) -> Tensor:
    """One stroke-5 row per row of head outputs ``out`` [n, 6M + 3] (as ``SketchRNN.generate``)."""
    logits, mu_x, mu_y, sigma_x, sigma_y, rho, pen = model._mixture_params(out, temperature)
    j = torch.multinomial(logits.softmax(-1), 1, generator=generator)
    mx, my, sx, sy, r = (p.gather(-1, j).squeeze(-1) for p in (mu_x, mu_y, sigma_x, sigma_y, rho))
    e1, e2 = torch.randn(2, out.shape[0], generator=generator, device=out.device,
                         dtype=out.dtype)
    dx = mx + sx * e1
    dy = my + sy * (r * e1 + (1.0 - r * r).sqrt() * e2)
    state = torch.multinomial(pen.softmax(-1), 1, generator=generator).squeeze(-1)
    return torch.cat([torch.stack([dx, dy], -1), F.one_hot(state, 3).to(out.dtype)], -1)
