"""Doubly reparameterised gradients for the importance-weighted bound (DReG).

The K-sample bound ``L_K = E[log (1/K) sum_k w_k]``, ``log w_k = log p(x, z_k) - log q(z_k | x)``
with ``z_k = z(eps_k; phi)``, has two routes from the guide's parameters phi to ``log w_k``: the
path through the sample ``z_k`` and the direct one through the density ``q(. ; phi)``. IWAE's
estimator takes both; the direct term is a score function whose share of the gradient does not
shrink as K grows, so the encoder's signal-to-noise ratio falls like ``1/sqrt(K)`` (Rainforth et
al. 2018). Tucker et al. (2019) rewrite the direct term by reparameterising it a second time:

    grad_phi L_K = E[ sum_k  w~_k^2  d log w_k / d z_k  dz_k / d phi ],

with ``w~_k = w_k / sum_j w_j`` and the derivative taken with ``phi`` held fixed inside ``log q``.
The model's parameters keep IWAE's gradient ``sum_k w~_k grad_theta log p(x, z_k)``.

[`DReGImportanceWeightedELBO`][] computes the same loss *value* as
[`ImportanceWeightedELBO`][objectives.ImportanceWeightedELBO] from one pass of the guide and the
model, with two changes that act on the gradient only:

* ``log q`` is evaluated on the sample with the guide distribution's parameters detached, so
  phi reaches the loss through ``z`` alone;
* the sample the model and ``log q`` see is a copy of ``z`` whose incoming gradient is multiplied
  by ``w~_k`` on the way back (an autograd function reading a buffer that the forward pass fills
  once the weights are known). The loss's own gradient with respect to ``log w_k`` is ``w~_k``
  (the softmax of ``logsumexp``), so the path to phi carries ``w~_k^2`` while the decoder, which
  never passes through ``z``, keeps ``w~_k``.

No value is read back to the host, so the objective is graph-safe like IWAE's; and the scaling is
an autograd function rather than a tensor hook, so a TorchScript trace keeps it:
[`JitDReGImportanceWeightedELBO`][] (``fit(..., dreg=True, jit=True)``) is the compiled form.

Scope: one latent guide site, reparameterised (the VAE's ``z``). With several sites a later
site's distribution may depend on an earlier sample, and detaching its parameters would cut that
path too; rather than bias the gradient silently, such guides raise a ``ValueError``.

References:
    G. Tucker, D. Lawson, S. Gu and C. J. Maddison. Doubly reparameterized gradient estimators
    for Monte Carlo objectives. ICLR 2019.
    T. Rainforth et al. Tighter variational bounds are not necessarily better. ICML 2018.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch.distributions import Independent, MultivariateNormal

from .importance import PARTICLE_PLATE, _data_frame, _site_log_prob
from .objectives import ImportanceWeightedELBO, JitCompiled


class DReGImportanceWeightedELBO(ImportanceWeightedELBO):
    """The IWAE loss with the doubly reparameterised encoder gradient (see the module docstring).

    ``loss = -(N/M) sum_m [logsumexp_k log w_km - log K]``, the value of
    [`ImportanceWeightedELBO`][objectives.ImportanceWeightedELBO] for the same draws; the guide's
    parameters get ``sum_k w~_k^2 (d log w_k / dz_k)(dz_k / dphi)``, the model's IWAE's gradient.
    The guide must have exactly one latent sample site, with ``rsample``; its distribution a
    Normal-like one whose parameters can be detached (``Normal``, ``MultivariateNormal``, any
    distribution whose ``arg_constraints`` are all set, wrapped in ``to_event``, ``expand`` or
    ``mask``).

    Args:
        num_particles: K, importance samples per data point (default 5).
    """

    graph_safe = True  # no host sync in differentiable_loss (tests/test_dreg.py)

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs):
        k = self.num_particles
        with pyro.plate(PARTICLE_PLATE, k, dim=-2):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            site = _the_latent_site(guide_trace)
            value = site["value"]
            # Filled below once the weights are known; read by the backward pass.
            weights = value.new_empty(value.shape[: value.dim() - site["fn"].event_dim])
            z = _ScaleGradient.apply(site["value"], weights)
            site["value"] = z
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
        model_trace.compute_log_prob()
        data = _data_frame(model_trace)
        batch = data.size
        log_w = 0.0
        for node in model_trace.nodes.values():
            if node["type"] == "sample" and not site_is_subsample(node):
                log_w = log_w + _site_log_prob(node, k, batch, "model")
        log_q = stop_gradient(site["fn"]).log_prob(z)
        log_w = log_w - _site_log_prob(dict(site, unscaled_log_prob=log_q), k, batch, "guide")
        normalised = torch.softmax(log_w.detach(), 0)
        weights.copy_(normalised)
        bound = torch.logsumexp(log_w, 0) - math.log(k)
        return -bound.sum() * ((data.full_size or data.size) / data.size)


class JitDReGImportanceWeightedELBO(JitCompiled, DReGImportanceWeightedELBO):
    """[`DReGImportanceWeightedELBO`][] compiled with Pyro's JIT
    (see [`JitCompiled`][objectives.JitCompiled]).

    Args:
        num_particles: K, importance samples per data point (default 5).
    """


class _ScaleGradient(torch.autograd.Function):
    """The identity on ``z`` whose backward multiplies the gradient by ``weights`` [K, M].

    ``weights`` is filled in place *after* this op runs (the weights need the model's output),
    so it is kept on ``ctx`` rather than saved for backward, whose version check would refuse
    the later write.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.weights = weights
        return z.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w = ctx.weights
        return grad * w.reshape(*w.shape, *([1] * (grad.dim() - w.dim()))), None


def _the_latent_site(guide_trace) -> dict:
    sites = [
        site
        for site in guide_trace.nodes.values()
        if site["type"] == "sample" and not site_is_subsample(site)
    ]
    if len(sites) != 1 or sites[0]["is_observed"]:
        names = [site["name"] for site in sites]
        raise ValueError(
            f"DReG supports a guide with exactly one latent sample site, got {names}: with "
            "several, detaching one site's parameters would also cut its dependence on the "
            "others' samples"
        )
    site = sites[0]
    if not getattr(site["fn"], "has_rsample", False) or site["infer"].get("enumerate"):
        raise ValueError(
            f"DReG needs a reparameterised guide site; '{site['name']}' is not "
            f"({type(site['fn']).__name__})"
        )
    return site


def stop_gradient(fn: torch.distributions.Distribution) -> torch.distributions.Distribution:
    """The same distribution with its parameters detached from the autograd graph.

    Supports ``Independent`` (``to_event``), Pyro's ``ExpandedDistribution`` and
    ``MaskedDistribution`` around a leaf whose ``arg_constraints`` are all set as attributes
    (``Normal``, ``Laplace``, ...), and ``MultivariateNormal`` (through its ``scale_tril``).

    Raises:
        ValueError: any other distribution (its parameters cannot be found generically).
    """
    if isinstance(fn, Independent):
        return dist.Independent(stop_gradient(fn.base_dist), fn.reinterpreted_batch_ndims)
    if isinstance(fn, dist.ExpandedDistribution):
        return stop_gradient(fn.base_dist).expand(fn.batch_shape)
    if isinstance(fn, dist.MaskedDistribution):
        return stop_gradient(fn.base_dist).mask(fn._mask)
    if isinstance(fn, MultivariateNormal):
        return dist.MultivariateNormal(
            fn.loc.detach(), scale_tril=fn.scale_tril.detach(), validate_args=False
        )
    names = list(getattr(fn, "arg_constraints", {}))
    if names and all(name in vars(fn) for name in names):
        params = {name: getattr(fn, name).detach() for name in names}
        return type(fn)(**params, validate_args=False)
    raise ValueError(
        f"DReG cannot detach the parameters of {type(fn).__name__}: use a Normal, a "
        "MultivariateNormal, or a distribution whose arg_constraints are all set"
    )
