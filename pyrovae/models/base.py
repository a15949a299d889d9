"""Pieces every pyrovae model shares: the data plate, the data checks and a rebuildable config.

Data-check rule (the same for every model):

1. **Structure, always.** Every ``model``/``guide`` call checks that ``x`` is a floating-point
   tensor ``[N, data_dim]`` (and, for M2, that labels are a 1-D integer tensor with one label per
   row). These checks read only shapes and dtypes: no host sync, safe under JIT and CUDA graphs.
2. **Values, once per data tensor, while Pyro validation is on.** Checks that read the values
   (the likelihood's support: binary for Bernoulli, [0, 1] with ``allow_continuous=True``,
   counts for Poisson, finite numbers for Gaussians; labels in ``0..C-1``, every class present)
   cost a host sync. They run on the *whole* tensor the model is given (not only the minibatch
   it scores), the first time the model sees that tensor, and again only if the tensor is
   modified in place (its version counter moves); the result is remembered on the tensor
   itself. They run while Pyro validation is enabled (Pyro's default; switch them off with
   ``pyro.enable_validation(False)``) and never while JIT-tracing.
3. **On demand.** ``model.check_data(x)`` runs both kinds of check now, whatever the
   validation flag.

A value check fails with a [`DataError`][] (a ``ValueError``) whose message is one line that
names the fix.

Vocabulary (one meaning per name, in every model that has the method):

- ``encode(x)``: the guide's parameters for data ``x``, e.g. ``(loc, scale)`` of ``q(z | x)``;
  no draw.
- ``decode(z)``: the mean ``E[x | z]`` of ``p(x | z)`` (pixel probabilities for Bernoulli, the
  Gaussian mean, Poisson rates); deterministic. Only where ``p(x | z)`` factorises given ``z``:
  the autoregressive sequence models have no closed-form mean, so no ``decode``.
- ``generate(z, temperature=..., generator=...)``: data drawn from ``p(x | z)`` step by step by
  an autoregressive decoder (SketchRNN's strokes, the SMILES VAE's tokens;
  ``generate_smiles`` gives the SMILES VAE's strings).
- ``sample(n, ..., generator=None)``: data from the model: ``z`` from its prior (``prior``,
  where the model names one), then ``decode(z)`` (or a draw of ``x``) or ``generate(z)``; M2
  takes the labels ``y`` in place of ``n``. Every draw, ``x``'s included, comes from
  ``generator`` when one is given (the global RNG is left alone), in the parameters' dtype and
  on their device. Models that decode in one shot draw on the generator's device (the CPU
  without one) and move the draw, so a seeded sample is the same on every device
  (`standard_normal`, `draw_data`); the autoregressive decoders draw every token on the
  model's device, where their ``generator`` must live.
- ``reconstruct(x)``: ``decode`` or ``generate`` at the guide's mean, ``encode(x)[0]``.
- ``encoder`` and ``decoder`` attributes are networks (``torch.nn.Module``), never methods;
  ``encoder=``/``decoder=`` constructor arguments replace them with the user's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.infer.util import is_validation_enabled
from pyro.nn import PyroModule

_CHECKED = "_pyrovae_checked"  # attribute on a data tensor: {check key: version checked}


class DataError(ValueError):
    """A ``ValueError`` about the data's values, whose message stays one line.

    Pyro re-raises a ``ValueError`` from inside a traced model as ``type(e)(message + "\\n" +
    shape table)``; the shape table says nothing about data values, so it is cut off here.
    """

    def __init__(self, message: str) -> None:
        super().__init__(str(message).split("\nTrace Shapes:")[0])


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
    """Raise a ``ValueError`` naming the problem if ``x`` is not a float [N, data_dim].

    Shapes and dtype only (rule 1 of the module docstring): no host sync.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 2 or x.shape[1] != data_dim:
        raise ValueError(f"{what} must have shape [N, {data_dim}], got {list(x.shape)}")


def check_finite(x: torch.Tensor, what: str = "x") -> None:
    """Raise a [`DataError`][] if ``x`` holds NaN or inf (one host sync)."""
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{what} contains NaN or inf")


def value_checks_enabled() -> bool:
    """Whether value checks run now: Pyro validation on and not JIT-tracing (rule 2)."""
    return is_validation_enabled() and not torch.jit.is_tracing()


def check_once(x: torch.Tensor, key: str, check: Callable[[torch.Tensor], None]) -> None:
    """Run ``check(x)`` unless it already passed on this tensor at its current version.

    ``key`` names the check (two models with different rules check the same tensor separately).
    Does nothing while value checks are off ([`value_checks_enabled`][]).
    """
    if not value_checks_enabled():
        return
    seen = getattr(x, _CHECKED, None)
    if seen is not None and seen.get(key) == x._version:
        return
    check(x)
    if seen is None:
        seen = {}
        setattr(x, _CHECKED, seen)
    seen[key] = x._version


def draw(
    distribution: torch.distributions.Distribution,
    sample_shape: tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``distribution.sample(sample_shape)``, from ``generator``'s stream when one is given.

    ``torch.distributions`` take no generator, so the draw runs with torch's global RNG of the
    generator's device set to the generator's state, whose advanced state is then written back;
    the global RNG is left as it was. A draw from ``N(0, I)`` therefore equals
    ``torch.randn(..., generator=generator)``. The distribution must live on the generator's
    device (a ``ValueError`` otherwise: the draw would not come from the generator).
    """
    if generator is None:
        return distribution.sample(sample_shape)
    device = generator.device
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        if cuda:
            torch.cuda.set_rng_state(generator.get_state(), device)
        else:
            torch.set_rng_state(generator.get_state())
        value = distribution.sample(sample_shape)
        generator.set_state(torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state())
    if value.device.type != device.type:
        raise ValueError(
            f"the generator lives on {device} but the distribution draws on {value.device}"
        )
    return value


def standard_normal(
    shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``N(0, I)`` draws of ``shape`` in ``like``'s dtype, on ``like``'s device: drawn on the
    generator's device (the CPU without one) and moved, so a seeded draw is device-independent."""
    where = "cpu" if generator is None else generator.device
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=where).to(like.device)


def draw_data(likelihood: Any, out: torch.Tensor, generator: torch.Generator | None = None):
    """A draw of ``x ~ likelihood.distribution(out)`` on ``out``'s device; with a generator,
    drawn from its stream on its device (as `standard_normal`) and moved."""
    if generator is None:
        return likelihood.distribution(out).sample()
    return draw(likelihood.distribution(out.to(generator.device)), (), generator).to(out.device)


def check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_hidden_sizes(sizes, name: str = "hidden_sizes", allow_empty: bool = False) -> list[int]:
    """``sizes`` as a list of positive ints; a ``ValueError`` naming ``name`` otherwise."""
    try:
        sizes = list(sizes)
    except TypeError:
        raise ValueError(f"{name} must be a list of positive ints, got {sizes!r}") from None
    if not sizes and not allow_empty:
        raise ValueError(f"{name} must list at least one width")
    return [check_positive_int(int(s) if not isinstance(s, bool) else s, f"{name}[i]")
            for s in sizes]


class ConfigurableModule(PyroModule):
    """A ``PyroModule`` that remembers the keyword arguments that built it.

    ``config`` is stored in checkpoints, so [`pyrovae.load_checkpoint`][] can rebuild the model
    with [`from_config`][] and load its weights. A model whose constructor arguments were
    renamed overrides [`upgrade_config`][] to map old names to new ones.
    """

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.config = dict(config)

    @classmethod
    def upgrade_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """A config saved by an older pyrovae, with its keys renamed to today's (default: as is)."""
        return dict(config)

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        """The model built from a (possibly old) ``config``: ``cls(**upgrade_config(config))``."""
        return cls(**cls.upgrade_config(config))
