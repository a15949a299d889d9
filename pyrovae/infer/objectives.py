"""The training objectives ``fit`` understands, by name, and the importance-weighted bound."""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable

import pyro.infer as infer
import pyro.ops.jit
import torch

from .importance import log_weights_and_scale

OBJECTIVES = ("elbo", "meanfield", "enum", "iwae", "sum_and_sample")


class ImportanceWeightedELBO:
    """The K-sample importance-weighted bound (IWAE; Burda et al. 2016) as a loss.

    ``loss = -(N/M) sum_m [logsumexp_k log w_km - log K]`` over a minibatch of M rows, with the K
    particles vectorised. Its gradient uses the reparameterised samples, so every guide site
    must be reparameterisable. At K = 1 it is the ``Trace_ELBO`` loss.

    Args:
        num_particles: K, the number of importance samples per data point (default 5).
    """

    graph_safe = True  # no host sync in differentiable_loss (tests/test_graph_safe.py)

    def __init__(self, num_particles: int = 5) -> None:
        if num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, got {num_particles}")
        self.num_particles = num_particles

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs):
        log_w, scale = log_weights_and_scale(
            model, guide, *args, num_samples=self.num_particles, **kwargs
        )
        bound = torch.logsumexp(log_w, 0) - math.log(self.num_particles)
        return -bound.sum() * scale

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))


class JitCompiled:
    """Mixin: the objective's ``differentiable_loss`` compiled with Pyro's JIT (``pyro.ops.jit``).

    The first call per model/guide pair and input shapes traces the guide, the model and the
    bound into one TorchScript graph; later calls run that graph, without Pyro's per-site Python
    work (messenger stacks, ``PyroModule`` parameter statements), which at batch 20 is a large
    share of a small VAE's step. As with Pyro's ``JitTrace_ELBO`` the model must have static
    structure and take every tensor positionally (``fit(..., jit=True)`` does this); a new input
    shape compiles a new graph, since a trace bakes in the N/M scale (``fit`` drops the last short
    batch when ``jit``). The compiled graph draws its noise with other kernels than the eager
    code, so the same seed gives other (equally distributed) samples. Not graph-safe: a CUDA
    graph needs the eager objective.
    """

    graph_safe = False

    def __init__(self, num_particles: int = 5) -> None:
        super().__init__(num_particles)
        self._compiled: dict[tuple, Callable] = {}

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs):
        shapes = tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else None for a in args)
        key = (_identity(model), _identity(guide), shapes)
        if key not in self._compiled:
            weakself = weakref.ref(self)

            @pyro.ops.jit.trace(ignore_warnings=True)
            def loss(*args, **kwargs):
                return super(JitCompiled, weakself()).differentiable_loss(
                    model, guide, *args, **kwargs
                )

            self._compiled[key] = loss
        return self._compiled[key](*args, **kwargs)


def _identity(fn: Callable):
    # A bound method is a new object at every attribute access (``vae.model``): key it by its
    # instance and function, or every call would compile anew.
    if hasattr(fn, "__self__") and hasattr(fn, "__func__"):
        return id(fn.__self__), id(fn.__func__)
    return id(fn)


class JitImportanceWeightedELBO(JitCompiled, ImportanceWeightedELBO):
    """[`ImportanceWeightedELBO`][] compiled with Pyro's JIT (see [`JitCompiled`][]).

    Args:
        num_particles: K, the number of importance samples per data point (default 5).
    """


class _NothingToEnumerateIsFine:
    """``TraceEnum_ELBO`` without its warning for traces that have no enumerated site.

    A semi-supervised model enumerates ``y`` on unlabelled batches only; on labelled batches,
    scored by the same objective, there is nothing to enumerate, and that is expected.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites")
            return super().differentiable_loss(model, guide, *args, **kwargs)


class EnumELBO(_NothingToEnumerateIsFine, infer.TraceEnum_ELBO):
    pass


class JitEnumELBO(_NothingToEnumerateIsFine, infer.JitTraceEnum_ELBO):
    pass


def make_objective(
    name: str = "elbo",
    num_particles: int = 1,
    vectorize_particles: bool = True,
    jit: bool = False,
    max_plate_nesting: int | None = 1,
    graph_safe: bool = False,
    dreg: bool = False,
    topk: int = 3,
):
    """Build an objective with a ``differentiable_loss(model, guide, *args, **kwargs)`` method.

    Args:
        name: ``"elbo"`` (``Trace_ELBO``, Monte-Carlo KL), ``"meanfield"``
            (``TraceMeanField_ELBO``, analytic KL where one is registered), ``"enum"``
            (``TraceEnum_ELBO``: sites marked for enumeration are summed out exactly),
            ``"sum_and_sample"`` (the enumerated site's top ``topk`` values summed, one more
            sampled; see ``topk``) or ``"iwae"`` ([`ImportanceWeightedELBO`][] with
            K = ``num_particles``; [`JitImportanceWeightedELBO`][] with ``jit``).
        num_particles: samples per data point (default 1).
        vectorize_particles: draw the particles in one vectorised pass (default True).
        jit: use Pyro's JIT-compiled variant (``JitTrace_ELBO`` etc.; default False). The model
            must then have static structure and take every tensor positionally.
        max_plate_nesting: passed to Pyro (default 1, pyrovae's data plate; None: Pyro finds it
            by running the model).
        graph_safe: the same objective computed without host syncs, for CUDA graphs
            ([`pyrovae.infer.graph_safe`][]; default False). ``"iwae"`` is graph-safe as is.
        dreg: for ``"iwae"`` only, the doubly reparameterised encoder gradient
            ([`pyrovae.infer.dreg.DReGImportanceWeightedELBO`][]: the same loss value, a
            lower-variance gradient for the guide; default False).
        topk: for ``"sum_and_sample"``
            ([`SumAndSampleELBO`][pyrovae.infer.sum_and_sample.SumAndSampleELBO]: the
            enumerated site's ``topk`` most probable values summed exactly, one more drawn
            from the rest; unbiased for ``"enum"``), the values summed (default 3).
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {OBJECTIVES}")
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    if dreg and name != "iwae":
        raise ValueError(f"dreg=True is an option of the 'iwae' objective, not of {name!r}")
    if name == "sum_and_sample":
        if jit or graph_safe:
            raise ValueError("the 'sum_and_sample' objective runs eagerly: no jit or graph_safe")
        if max_plate_nesting is None:
            raise ValueError("'sum_and_sample' needs max_plate_nesting (it places the choices)")
        from .sum_and_sample import SumAndSampleELBO

        return SumAndSampleELBO(topk, num_particles, max_plate_nesting)
    if name == "iwae":
        if jit and graph_safe:
            raise ValueError("graph_safe=True and jit=True exclude each other")
        if dreg:
            from .dreg import DReGImportanceWeightedELBO, JitDReGImportanceWeightedELBO

            return (JitDReGImportanceWeightedELBO if jit else DReGImportanceWeightedELBO)(
                num_particles
            )
        return (JitImportanceWeightedELBO if jit else ImportanceWeightedELBO)(num_particles)
    if graph_safe:
        return _graph_safe(name, num_particles, vectorize_particles, jit, max_plate_nesting)
    classes = {
        "elbo": (infer.Trace_ELBO, infer.JitTrace_ELBO),
        "meanfield": (infer.TraceMeanField_ELBO, infer.JitTraceMeanField_ELBO),
        "enum": (EnumELBO, JitEnumELBO),
    }
    cls = classes[name][1 if jit else 0]
    options = dict(
        num_particles=num_particles,
        vectorize_particles=vectorize_particles and num_particles > 1,
        max_plate_nesting=max_plate_nesting if max_plate_nesting is not None else float("inf"),
    )
    if jit:
        options["ignore_jit_warnings"] = True
    return cls(**options)


def _graph_safe(name, num_particles, vectorize_particles, jit, max_plate_nesting):
    from .graph_safe import GRAPH_SAFE_OBJECTIVES

    if jit:
        raise ValueError("graph_safe=True and jit=True exclude each other")
    if max_plate_nesting is None:
        raise ValueError("graph_safe=True needs max_plate_nesting (guessing it runs the model)")
    return GRAPH_SAFE_OBJECTIVES[name](num_particles, vectorize_particles, max_plate_nesting)
