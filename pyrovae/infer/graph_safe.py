"""Objectives computed from traces without host synchronisation, so a CUDA graph can capture them.

Pyro's ELBOs read values back to the host inside the loss: ``Trace_ELBO`` and
``TraceMeanField_ELBO`` call ``torch_item`` on every site's log-probability (to return a float
loss beside the surrogate), and ``TraceEnum_ELBO``'s ``Dice.compute_expectation`` asks
``(prob > 0).all()`` and then ``masked_select``s the zero-probability terms away (a
data-dependent shape). Each read blocks the host until the device has caught up, and none of
them can run inside ``torch.cuda.graph`` capture. The objectives here compute the same numbers
from the same traces (``poutine.trace`` of the guide, the model replayed against it) with tensor
operations only:

* [`GraphSafeELBO`][]: ``Trace_ELBO``. The loss is ``-(sum_sites log p - sum_sites log q) / P``
  over P particles, every site's log-probability scaled by its plates (N/M for a subsampled data
  plate) and ``poutine.scale``. Guide sites without ``rsample`` get Pyro's partially
  Rao-Blackwellised score-function surrogate; the returned value is the ELBO loss and its
  gradient the surrogate's (``loss + surrogate - surrogate.detach()``, no ``.item()``).
* [`GraphSafeMeanFieldELBO`][]: ``TraceMeanField_ELBO``. For every latent site the analytic
  ``KL(q || p)`` from ``torch.distributions.kl_divergence`` is used when one is registered for
  the pair of distributions (Normal-Normal, Independent of those, MultivariateNormal-
  MultivariateNormal, ... whatever PyTorch and Pyro register), scaled by the guide site's scale
  and mask; otherwise ``log p - log q`` of the sample. Every latent guide site must be
  reparameterisable (as Pyro's requires).
* [`GraphSafeEnumELBO`][]: ``TraceEnum_ELBO`` for the case pyrovae needs: at most one guide
  site marked ``infer={"enumerate": "parallel"}`` (M2's ``y``), continuous reparameterised
  sites, plates. The sum over the support is explicit, with the guide's probabilities
  ``q(y) = exp(log q(y))`` as weights: ``E_q(y)[log p(x, y, z) - log q(z | x, y)] -
  E_q(y) log q(y | x)`` per data point; a site whose log-probability does not depend on ``y``
  enters unweighted. Guide ``pyro.factor`` sites are subtracted like any guide site, as in
  Pyro. With no enumerated site in a trace (M2's labelled batches) it is [`GraphSafeELBO`][].
* The importance-weighted bound needs nothing new: pyrovae's own
  [`ImportanceWeightedELBO`][objectives.ImportanceWeightedELBO] makes no host sync (the tests
  check).

All take Pyro's ``differentiable_loss(model, guide, *args, **kwargs)`` interface and return a
0-d tensor on the data's device. They are graph-safe only while Pyro's validation is off:
validation checks shapes and supports, and warns on NaN, by reading values. ``loss(...)`` returns
a float and so syncs once (for validation and logging, not for the training step).

[`forbid_host_sync`][] raises on any host read inside its block: on CUDA through
``torch.cuda.set_sync_debug_mode("error")``, on any device by making ``Tensor.item``,
``__bool__``, ``__float__``, ``__int__``, ``__index__`` and ``tolist`` raise.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterator

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import MultiFrameTensor, get_plate_stacks, is_validation_enabled
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match

PARTICLE_PLATE = "_graph_safe_particles"
_HOST_READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist")


class HostSyncError(RuntimeError):
    """A tensor's value was read by the host inside [`forbid_host_sync`][]."""


@contextlib.contextmanager
def forbid_host_sync(device: torch.device | str | None = None) -> Iterator[None]:
    """Make every host read of a tensor's value raise inside the block.

    Args:
        device: with a CUDA device, also ``torch.cuda.set_sync_debug_mode("error")`` (which
            catches synchronising CUDA calls such as ``nonzero`` or ``masked_select`` too).

    Raises:
        HostSyncError: from ``Tensor.item``, ``__bool__``, ``__float__``, ``__int__``,
            ``__index__`` or ``tolist`` called inside the block (any device).
    """
    saved = {name: getattr(torch.Tensor, name) for name in _HOST_READS}

    def refuse(name):
        def method(self, *args, **kwargs):
            raise HostSyncError(
                f"host read of a tensor's value (Tensor.{name}) in a graph-safe block"
            )

        return method

    cuda = device is not None and torch.device(device).type == "cuda"
    previous = torch.cuda.get_sync_debug_mode() if cuda else None
    for name in _HOST_READS:
        setattr(torch.Tensor, name, refuse(name))
    if cuda:
        torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
        if cuda:
            torch.cuda.set_sync_debug_mode(previous)


def _is_zero(term) -> bool:
    return isinstance(term, numbers.Number) and term == 0


def _sample_sites(trace):
    return [(name, site) for name, site in trace.nodes.items() if site["type"] == "sample"]


class _TraceObjective:
    """Shared machinery: particles, traces and the float ``loss``.

    Args:
        num_particles: P, samples per data point (default 1).
        vectorize_particles: draw the P particles in one pass, in a plate left of the model's
            plates (default True); otherwise P passes, averaged.
        max_plate_nesting: the number of plates the model nests (default 1, pyrovae's data plate
            at dim=-1). It must be given: guessing it would run the model an extra time.
    """

    enumerate_guide = False
    graph_safe = True  # what CompiledStep's callers may check

    def __init__(
        self, num_particles: int = 1, vectorize_particles: bool = True, max_plate_nesting: int = 1
    ) -> None:
        if (
            isinstance(num_particles, bool)
            or not isinstance(num_particles, int)
            or num_particles < 1
        ):
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
        if not isinstance(max_plate_nesting, int) or max_plate_nesting < 0:
            raise ValueError(
                f"max_plate_nesting must be a non-negative integer, got {max_plate_nesting!r}"
            )
        self.num_particles = num_particles
        self.vectorize_particles = bool(vectorize_particles) and num_particles > 1
        # Plates of the model plus the particle plate, as Pyro's ELBO counts them.
        self.max_plate_nesting = max_plate_nesting + (1 if self.vectorize_particles else 0)

    def _wrap(self, fn: Callable) -> Callable:
        if not self.vectorize_particles:
            return fn
        return pyro.plate(PARTICLE_PLATE, self.num_particles, dim=-self.max_plate_nesting)(fn)

    def _traces(self, model, guide, args, kwargs):
        model, guide = self._wrap(model), self._wrap(guide)
        if self.enumerate_guide:
            guide = EnumMessenger(first_available_dim=-1 - self.max_plate_nesting)(guide)
            model = EnumMessenger()(model)
        for _ in range(1 if self.vectorize_particles else self.num_particles):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
            if is_validation_enabled():
                check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
            guide_trace = prune_subsample_sites(guide_trace)
            model_trace = prune_subsample_sites(model_trace)
            model_trace.compute_log_prob()
            guide_trace.compute_score_parts()
            yield model_trace, guide_trace

    def _particle(self, model_trace, guide_trace) -> tuple[torch.Tensor, torch.Tensor]:
        """``(elbo, surrogate_elbo)`` of one (possibly vectorised) particle."""
        raise NotImplementedError

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args, **kwargs
    ) -> torch.Tensor:
        """The negative ELBO as a 0-d tensor on the data's device; no host sync (validation off)."""
        elbo, surrogate, exact = 0.0, 0.0, True
        for model_trace, guide_trace in self._traces(model, guide, args, kwargs):
            elbo_p, surrogate_p = self._particle(model_trace, guide_trace)
            exact = exact and surrogate_p is elbo_p
            elbo = elbo + elbo_p
            surrogate = surrogate + surrogate_p
        if not isinstance(elbo, torch.Tensor):
            raise ValueError("the ELBO has no sample site: nothing to differentiate")
        loss = -elbo / self.num_particles
        if exact:  # every guide site reparameterised: the ELBO is its own surrogate
            return loss
        surrogate_loss = -surrogate / self.num_particles
        # The value of the loss, the gradient of the surrogate (Pyro adds a float instead).
        return surrogate_loss + (loss - surrogate_loss).detach()

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """The negative ELBO as a float (one host sync)."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))


def _score_function_elbo(model_trace, guide_trace) -> tuple[torch.Tensor, torch.Tensor]:
    """``Trace_ELBO``'s particle: the ELBO and its surrogate with score-function terms.

    With every guide site reparameterised the surrogate is the ELBO itself (the same tensor).
    """
    model_sum = 0.0
    for _, site in _sample_sites(model_trace):
        model_sum = model_sum + site["log_prob_sum"]
    elbo, surrogate, log_r = model_sum, model_sum, None
    guide_sites = _sample_sites(guide_trace)
    for _, site in guide_sites:
        elbo = elbo - site["log_prob_sum"]
    if all(_is_zero(site["score_parts"].score_function) for _, site in guide_sites):
        return elbo, elbo
    for _, site in guide_sites:
        _, score_function, entropy = site["score_parts"]
        if not _is_zero(entropy):
            surrogate = surrogate - entropy.sum()
        if not _is_zero(score_function):
            if log_r is None:
                log_r = _log_ratios(model_trace, guide_trace)
            downstream = log_r.sum_to(site["cond_indep_stack"])
            surrogate = surrogate + (downstream * score_function).sum()
    return elbo, surrogate


def _log_ratios(model_trace, guide_trace) -> MultiFrameTensor:
    """``log p - log q`` of every model site, detached, grouped by plate stack."""
    stacks = get_plate_stacks(model_trace)
    log_r = MultiFrameTensor()
    for name, site in _sample_sites(model_trace):
        term = site["log_prob"]
        if not site["is_observed"]:
            term = term - guide_trace.nodes[name]["log_prob"]
        log_r.add((stacks[name], term.detach()))
    return log_r


class GraphSafeELBO(_TraceObjective):
    """``Trace_ELBO`` without host syncs (see the module docstring).

    Args:
        num_particles: P (default 1).
        vectorize_particles: one vectorised pass for the P particles (default True).
        max_plate_nesting: plates in the model (default 1).
    """

    def _particle(self, model_trace, guide_trace):
        return _score_function_elbo(model_trace, guide_trace)


def _require_rsample(site: dict, objective: str) -> None:
    if not site["is_observed"] and not getattr(site["fn"], "has_rsample", False):
        raise ValueError(
            f"{objective} needs reparameterised guide sites; '{site['name']}' is not "
            f"({type(site['fn']).__name__})"
        )


class GraphSafeMeanFieldELBO(_TraceObjective):
    """``TraceMeanField_ELBO`` without host syncs: analytic KL where one is registered.

    Guide sites absent from the model (auxiliary sites, guide ``pyro.factor``) are subtracted,
    ``- log q``, as Pyro does.

    Args:
        num_particles: P (default 1).
        vectorize_particles: one vectorised pass for the P particles (default True).
        max_plate_nesting: plates in the model (default 1).
    """

    def _particle(self, model_trace, guide_trace):
        elbo = 0.0
        for name, model_site in _sample_sites(model_trace):
            if model_site["is_observed"]:
                elbo = elbo + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            _require_rsample(guide_site, "the mean-field ELBO")
            try:
                kl = torch.distributions.kl_divergence(guide_site["fn"], model_site["fn"])
            except NotImplementedError:
                elbo = elbo + model_site["log_prob_sum"] - guide_site["log_prob_sum"]
                continue
            kl = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
            elbo = elbo - kl.sum()
        for name, guide_site in _sample_sites(guide_trace):
            if name not in model_trace.nodes:
                _require_rsample(guide_site, "the mean-field ELBO")
                elbo = elbo - guide_site["log_prob_sum"]
        return elbo, elbo


class GraphSafeEnumELBO(_TraceObjective):
    """``TraceEnum_ELBO`` without host syncs, for one parallel-enumerated guide site.

    The guide's site marked ``infer={"enumerate": "parallel"}`` (e.g. through
    ``config_enumerate``) takes all its values at once in a dimension left of the plates (and of
    the particle plate); every log-probability that depends on it is averaged with the guide's
    probabilities. Supported: at most one enumerated site per trace, in the guide only;
    reparameterised continuous guide sites. Zero-probability values contribute zero (Pyro drops
    them with ``masked_select``; here ``where`` keeps the shape static).

    Args:
        num_particles: P (default 1).
        vectorize_particles: one vectorised pass for the P particles (default True).
        max_plate_nesting: plates in the model (default 1).
    """

    enumerate_guide = True

    def _particle(self, model_trace, guide_trace):
        enumerated = [
            (name, site)
            for name, site in _sample_sites(guide_trace)
            if site["infer"].get("_enumerate_dim") is not None
        ]
        guide_names = {name for name, _ in enumerated}
        for name, site in _sample_sites(model_trace):
            if site["infer"].get("_enumerate_dim") is not None and name not in guide_names:
                raise ValueError(
                    f"model site '{name}' is enumerated in the model: only guide enumeration "
                    "is supported"
                )
        if not enumerated:
            return _score_function_elbo(model_trace, guide_trace)
        if len(enumerated) > 1:
            names = [name for name, _ in enumerated]
            raise ValueError(f"only one enumerated guide site is supported, got {names}")
        y_name, y_site = enumerated[0]
        dim = y_site["infer"]["_enumerate_dim"]
        probs = scale_and_mask(y_site["unscaled_log_prob"], 1.0, y_site["mask"]).exp()

        def expect(term: torch.Tensor) -> torch.Tensor:
            if term.dim() < -dim or term.shape[dim] == 1:
                return term.sum()  # independent of the enumerated value
            return (probs * torch.where(probs > 0, term, term.new_zeros(()))).sum()

        elbo = 0.0
        for _, site in _sample_sites(model_trace):
            elbo = elbo + expect(site["log_prob"])
        for name, site in _sample_sites(guide_trace):
            if name != y_name:
                _require_rsample(site, "the enumerated ELBO")
            elbo = elbo - expect(site["log_prob"])
        return elbo, elbo


GRAPH_SAFE_OBJECTIVES = {
    "elbo": GraphSafeELBO,
    "meanfield": GraphSafeMeanFieldELBO,
    "enum": GraphSafeEnumELBO,
}
