"""Per-datapoint importance weights from traces of a model and its guide.

For K samples ``z_k ~ q(z | x_n)`` the log-weights ``log w_kn = log p(x_n, z_k) - log q(z_k | x_n)``
give the importance-weighted bound (Burda et al. 2016)

    L_K(x_n) = E[log (1/K) sum_k w_kn] <= log p(x_n),

which is the ELBO at K = 1 and tends to ``log p(x_n)`` as K grows. The weights are read from
traces of the *same* model and guide that training uses, so evaluation cannot drift from training.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample

PARTICLE_PLATE = "_importance_particles"


def is_data_frame(frame) -> bool:
    """Whether a plate frame (from a site's ``cond_indep_stack``) is pyrovae's data plate: the
    vectorised plate at ``dim=-1`` ([`pyrovae.models.base.data_plate`][]), not the particles'."""
    return frame.vectorized and frame.dim == -1 and frame.name != PARTICLE_PLATE


def _data_frame(trace):
    """The data plate's frame (at dim=-1) in a trace."""
    for site in trace.nodes.values():
        if site["type"] == "sample":
            for frame in site["cond_indep_stack"]:
                if is_data_frame(frame):
                    return frame
    raise ValueError("model has no sample site inside a data plate at dim=-1")


def _site_log_prob(site: dict, num_samples: int, batch: int, where: str) -> torch.Tensor:
    log_p = scale_and_mask(site["unscaled_log_prob"], 1.0, site["mask"])
    if not any(is_data_frame(f) for f in site["cond_indep_stack"]):
        raise ValueError(
            f"{where} site '{site['name']}' is not inside the data plate (dim=-1): importance "
            "weights are per data point, so every sample site must be local to one data point"
        )
    return log_p.expand(num_samples, batch)


def log_importance_weights(
    model: Callable, guide: Callable, *args, num_samples: int, **kwargs
) -> torch.Tensor:
    """``log p(x_n, z_k) - log q(z_k | x_n)`` for K = ``num_samples`` draws: Tensor [K, M].

    ``model`` and ``guide`` take ``*args, **kwargs`` and put every sample site in one data plate at
    ``dim=-1`` (of M rows: the whole data or a subsample). The K draws are vectorised in a plate
    at ``dim=-2``. Log-probabilities are unscaled (no N/M factor).
    """
    return log_weights_and_scale(model, guide, *args, num_samples=num_samples, **kwargs)[0]


def log_weights_and_scale(
    model: Callable, guide: Callable, *args, num_samples: int, **kwargs
) -> tuple[torch.Tensor, float]:
    """[`log_importance_weights`][] and the N/M scale of the data plate."""
    with pyro.plate(PARTICLE_PLATE, num_samples, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    data = _data_frame(model_trace)
    batch = data.size  # M, the rows in this call (the subsample size)
    log_w = 0.0
    for site in model_trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            log_w = log_w + _site_log_prob(site, num_samples, batch, "model")
    for site in guide_trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            if site["infer"].get("enumerate"):
                raise ValueError(f"guide site '{site['name']}' is enumerated: not supported here")
            log_w = log_w - _site_log_prob(site, num_samples, batch, "guide")
    return log_w, (data.full_size or data.size) / data.size


@torch.no_grad()
def importance_log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    num_samples: int = 5000,
    sample_chunk: int = 100,
    batch_size: int = 500,
    **kwargs,
) -> torch.Tensor:
    """Importance-sampled estimate of ``log p(x_n)`` for each row of ``x``: Tensor [N].

    ``log (1/K) sum_k w_kn`` with K = ``num_samples`` draws from the guide, streamed in chunks of
    ``sample_chunk`` draws (a running log-sum-exp) and ``batch_size`` rows, so memory is
    O(sample_chunk x batch_size x D) whatever K is. The estimate is a lower bound in expectation
    (the K-sample IWAE bound) that tends to ``log p(x_n)`` as K grows.

    ``model(x, *args, subsample=idx, **kwargs)`` and the guide alike must follow pyrovae's data
    plate convention ([`pyrovae.models.base.data_plate`][]).
    """
    if num_samples < 1 or sample_chunk < 1 or batch_size < 1:
        raise ValueError("num_samples, sample_chunk and batch_size must be positive")
    out = []
    for start in range(0, x.shape[0], batch_size):
        idx = torch.arange(start, min(start + batch_size, x.shape[0]), device=x.device)
        total = None
        remaining = num_samples
        while remaining > 0:
            k = min(sample_chunk, remaining)
            log_w = log_importance_weights(
                model, guide, x, *args, subsample=idx, num_samples=k, **kwargs
            )
            chunk = torch.logsumexp(log_w, 0)
            total = chunk if total is None else torch.logaddexp(total, chunk)
            remaining -= k
        out.append(total - math.log(num_samples))
    return torch.cat(out)
