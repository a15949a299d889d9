"""Traces of a model and its guide with a pixel-wise mask (or a noise model) on the data site.

The helpers here are shared by [`pyrovae.infer.imputation`][] and
[`pyrovae.infer.denoising`][]. Everything is read from traces of the *same* ``model(x)`` and
``guide(x)`` that training uses; the only names assumed are those of `Sites` (the data
site ``"x"`` and the latent site ``"z"``, pyrovae's convention for its VAE and PPCA), so that a
rename is a one-line change here.

A pixel-wise mask cannot be given to ``poutine.mask``, which masks whole batch elements (one image
of a ``.to_event(1)`` site), so `ObservedSite` swaps the data site's distribution
``Independent(base, 1)`` for ``Independent(base.mask(observed), 1)``: Pyro's own masking of the
base distribution's batch elements, the pixels. Missing pixels then contribute exactly 0 to
``log p(x | z)``, whatever value ``x`` holds there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

PARTICLES = "_conditioning_particles"


@dataclass(frozen=True)
class Sites:
    """The names of the data site and of the (single) latent site of a pyrovae model."""

    observed: str = "x"
    latent: str = "z"


SITES = Sites()


class ObservedSite(Messenger):
    """Mask the data site pixel-wise and/or replace its per-pixel distribution.

    Args:
        mask: bool [..., D] broadcastable to the data site's base batch shape (True: the pixel
            enters the likelihood), or None for no mask.
        transform: ``callable(base) -> base'`` applied to the per-pixel base distribution before
            masking (a noise model, see [`pyrovae.infer.denoising`][]), or None.
        site: the data site's name (default ``SITES.observed``).

    After a run, ``self.clean`` holds the data site's original per-pixel distribution ``p(x | z)``
    (batch [..., D]), before any transform or mask.
    """

    def __init__(self, mask=None, transform: Callable | None = None, site: str = SITES.observed):
        super().__init__()
        self.mask, self.transform, self.site = mask, transform, site
        self.clean = None

    def _pyro_sample(self, msg) -> None:
        if msg["name"] != self.site or not msg["is_observed"]:
            return
        fn = msg["fn"]
        if not (isinstance(fn, dist.Independent) and fn.reinterpreted_batch_ndims == 1):
            raise ValueError(
                f"site '{self.site}' must be a distribution over pixels with one event dimension "
                f"(a .to_event(1) site), got {type(fn).__name__}"
            )
        base = fn.base_dist
        self.clean = base
        if self.transform is not None:
            base = self.transform(base)
        if self.mask is not None:
            base = base.mask(self.mask)
        msg["fn"] = base.to_event(1)


@dataclass
class Pass:
    """One vectorised pass of guide and model: everything per particle s and row n.

    ``z`` [S, N, K]; ``log_prior`` = log p(z), ``log_guide`` = log q(z | x), ``log_lik`` =
    log p(x | z) over the pixels in the mask, each [S, N]; ``clean`` the per-pixel distribution
    p(x | z) with batch shape [S, N, D].
    """

    z: torch.Tensor
    log_prior: torch.Tensor | None
    log_guide: torch.Tensor | None
    log_lik: torch.Tensor | None
    clean: dist.Distribution | None

    @property
    def log_joint(self) -> torch.Tensor:
        return self.log_prior + self.log_lik

    @property
    def log_weight(self) -> torch.Tensor:
        """``log p(x_mask, z) - log q(z | x)`` [S, N]."""
        return self.log_joint - self.log_guide


def _sum_sites(trace, like: torch.Tensor, shape, data_site: str | None,
               data: bool | None = None) -> torch.Tensor:
    """Sum of the sample sites' log-probabilities: the data site only (``data=True``), every
    other site (``data=False``) or all sites (``data=None``), as a Tensor of ``shape``."""
    total = like.new_zeros(shape)
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if data is not None and (name == data_site) != data:
            continue
        total = total + site["log_prob"]
    return total


def run_pass(
    module,
    x: torch.Tensor,
    *,
    num_particles: int,
    mask: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    transform: Callable | None = None,
    use_guide: bool = True,
    use_model: bool = True,
    sites: Sites = SITES,
) -> Pass:
    """Trace ``module.guide(x)`` (or replay ``z`` [S, N, K] through it) and ``module.model(x)``.

    Args:
        module: a model with ``.model(x)`` and ``.guide(x)``, its sites in a data plate at
            dim=-1 (pyrovae's convention); run here with particles in a plate at dim=-2.
        x: [N, D] the data the guide and the model see (missing pixels filled with any value
            in the likelihood's support).
        num_particles: S.
        mask: bool [N, D]: the pixels that enter ``log_lik`` (None: all).
        z: latent values [S, N, K] to condition on instead of sampling from the guide.
        transform: a noise model for the data site (see `ObservedSite`).
        use_guide: False: no guide at all; ``z`` (given) or a draw from the prior is used and
            ``log_guide`` is None.
        use_model: False: trace the guide only (``log_prior``, ``log_lik`` and ``clean`` are
            None); needs ``use_guide``.
    """
    observed = ObservedSite(mask, transform, sites.observed)
    shape = (num_particles, x.shape[0])
    with pyro.plate(PARTICLES, num_particles, dim=-2):
        guide_trace = None
        if z is not None:
            model = poutine.condition(module.model, data={sites.latent: z})
            if use_guide:
                guide = poutine.condition(module.guide, data={sites.latent: z})
                guide_trace = poutine.trace(guide).get_trace(x)
        elif use_guide:
            guide_trace = poutine.trace(module.guide).get_trace(x)
            model = poutine.replay(module.model, trace=guide_trace)
        else:
            model = module.model
        model_trace = poutine.trace(observed(model)).get_trace(x) if use_model else None
    log_guide = None
    if guide_trace is not None:
        guide_trace.compute_log_prob()
        log_guide = _sum_sites(guide_trace, x, shape, None)
    if model_trace is None:
        z = guide_trace.nodes[sites.latent]["value"].expand(*shape, -1)
        return Pass(z=z, log_prior=None, log_guide=log_guide, log_lik=None, clean=None)
    model_trace.compute_log_prob()
    return Pass(
        z=model_trace.nodes[sites.latent]["value"].expand(*shape, -1),
        log_prior=_sum_sites(model_trace, x, shape, sites.observed, False),
        log_guide=log_guide,
        log_lik=_sum_sites(model_trace, x, shape, sites.observed, True),
        clean=observed.clean,
    )


def pixel_mask(observed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Check an observation mask against ``x`` [N, D] and return it as a bool tensor."""
    if observed.shape != x.shape:
        raise ValueError(
            f"observed mask must have the shape of x {list(x.shape)}, got {list(observed.shape)}"
        )
    if observed.dtype != torch.bool:
        raise ValueError(f"observed mask must be a bool tensor, got {observed.dtype}")
    return observed.to(x.device)
