"""Test-set evaluation of a model/guide pair: the ELBO split into its terms, and log p(x).

Both are read from traces of the *same* model and guide that training uses:

* [`elbo_terms`][]: per data point, ``reconstruction = E_q[log p(x | z)]`` (the observed
  sites), ``kl = E_q[log q(z | x) - log p(z)]`` (the latent sites; Monte Carlo, or in closed form
  with ``analytic_kl=True`` where ``torch.distributions.kl_divergence`` knows the pair), and
  ``elbo = reconstruction - kl``; all in nats.
* [`importance_nll`][]: the importance-sampled ``log p(x)`` with K guide samples (K = 5000 for
  headline numbers), streamed over K by [`pyrovae.infer.importance_log_likelihood`][].
* [`evaluate`][]: both, averaged over the data, as a JSON-able dict.

All functions take a module with ``.model``/``.guide`` (run inside a fresh param scope, in eval
mode, without gradients) and whole data tensors; rows are processed in batches of ``batch_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from .importance import importance_log_likelihood
from .scope import param_scope

PARTICLES = "_evaluation_particles"


@dataclass
class ELBOTerms:
    """Per-data-point ELBO terms in nats, each a Tensor [N].

    ``sites`` splits them by site name: each observed site's ``E_q[log p(x_site | z)]`` (their
    sum is ``reconstruction``) and each latent site's KL (their sum is ``kl``).
    """

    elbo: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    sites: dict[str, torch.Tensor] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """Means over the data points (nats per example)."""
        return {
            "elbo": float(self.elbo.mean()),
            "reconstruction": float(self.reconstruction.mean()),
            "kl": float(self.kl.mean()),
        }


def _per_point(log_p: torch.Tensor, num_samples: int, batch: int) -> torch.Tensor:
    return log_p.expand(num_samples, batch).mean(0)


def _elbo_terms_batch(module, tensors, idx, num_samples: int, analytic_kl: bool) -> ELBOTerms:
    with pyro.plate(PARTICLES, num_samples, dim=-2):
        guide_trace = poutine.trace(module.guide).get_trace(*tensors, subsample=idx)
        model_trace = poutine.trace(poutine.replay(module.model, trace=guide_trace)).get_trace(
            *tensors, subsample=idx
        )
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    batch = idx.shape[0]
    rec = tensors[0].new_zeros(batch, dtype=torch.get_default_dtype())
    kl = torch.zeros_like(rec)
    sites = {}
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["is_observed"]:
            sites[name] = _per_point(site["unscaled_log_prob"], num_samples, batch)
            rec = rec + sites[name]
            continue
        guide_site = guide_trace.nodes.get(name)
        if guide_site is None:
            raise ValueError(f"latent model site '{name}' has no guide site")
        if analytic_kl:
            site_kl = kl_divergence(guide_site["fn"], site["fn"])
        else:
            site_kl = guide_site["unscaled_log_prob"] - site["unscaled_log_prob"]
        sites[name] = _per_point(site_kl, num_samples, batch)
        kl = kl + sites[name]
    return ELBOTerms(rec - kl, rec, kl, sites)


@torch.no_grad()
def elbo_terms(
    module,
    *tensors: torch.Tensor,
    num_samples: int = 1,
    batch_size: int = 1000,
    analytic_kl: bool = False,
) -> ELBOTerms:
    """The ELBO of every data point and its reconstruction and KL terms (nats), [N] each.

    Args:
        module: a model with ``.model(*tensors, subsample=idx)`` and
            ``.guide(*tensors, subsample=idx)`` whose sites all lie in the data plate at dim=-1
            (pyrovae's convention).
        *tensors: the model's data tensors, each with the N data points as rows: images
            ``x`` [N, D] for the VAE, ``(x, lengths)`` for SketchRNN, ``(tokens, lengths)`` for
            the SMILES VAE.
        num_samples: guide samples per data point, vectorised (default 1); the terms are their
            means, so the estimate's variance falls as 1/num_samples.
        batch_size: rows per pass (default 1000).
        analytic_kl: use the closed-form KL of each latent site (TraceMeanField_ELBO's choice;
            default False: Monte Carlo, as Trace_ELBO).
    """
    if not tensors:
        raise ValueError("elbo_terms needs the model's data tensors")
    if num_samples < 1 or batch_size < 1:
        raise ValueError("num_samples and batch_size must be positive")
    num_data = tensors[0].shape[0]
    was_training = module.training
    module.eval()
    parts = []
    try:
        with param_scope(module):
            for start in range(0, num_data, batch_size):
                idx = torch.arange(
                    start, min(start + batch_size, num_data), device=tensors[0].device
                )
                parts.append(_elbo_terms_batch(module, tensors, idx, num_samples, analytic_kl))
    finally:
        module.train(was_training)
    fields = ("elbo", "reconstruction", "kl")
    return ELBOTerms(
        *(torch.cat([getattr(p, f) for p in parts]) for f in fields),
        sites={name: torch.cat([p.sites[name] for p in parts]) for name in parts[0].sites},
    )


def sample_chunk_for(
    x: torch.Tensor, num_samples: int, batch_size: int, free_bytes: int | None = None
) -> int:
    """How many importance samples to draw at once for rows of ``x``, sized to free memory.

    On CUDA the chunk uses about a quarter of the device's free memory (``free_bytes``, default
    ``torch.cuda.mem_get_info``), counting ~16 values of the data's width per sample and row
    (the expanded data, the decoder's activations and log-densities); elsewhere it is 100, which
    keeps a CPU evaluation's memory near a few hundred MiB for MNIST.
    """
    if free_bytes is None:
        if x.device.type != "cuda":
            return min(100, num_samples)
        free_bytes = torch.cuda.mem_get_info(x.device)[0]
    width = max(1, x[0].numel() if x.dim() > 0 and x.shape[0] > 0 else 1)
    per_sample = 16 * width * x.element_size() * max(1, min(batch_size, x.shape[0]))
    return int(max(1, min(num_samples, (free_bytes // 4) // per_sample)))


@torch.no_grad()
def importance_nll(
    module,
    x: torch.Tensor,
    num_samples: int = 5000,
    sample_chunk: int | str = 100,
    batch_size: int = 500,
) -> torch.Tensor:
    """Importance-sampled ``log p(x_n)`` for every row of ``x``: Tensor [N] (nats).

    A thin wrapper over [`pyrovae.infer.importance_log_likelihood`][] that runs ``module``'s
    model and guide in a fresh param scope and in eval mode. The estimate is the K-sample IWAE
    bound with K = ``num_samples`` (default 5000): below ``log p(x)`` in expectation, never below
    the ELBO in expectation, and tending to ``log p(x)`` as K grows. The NLL is its negative.
    Memory is O(sample_chunk x batch_size x D); ``sample_chunk="auto"`` sizes the chunk to the
    device's free memory ([`sample_chunk_for`][]).
    """
    if sample_chunk == "auto":
        sample_chunk = sample_chunk_for(x, num_samples, batch_size)
    was_training = module.training
    module.eval()
    try:
        with param_scope(module):
            return importance_log_likelihood(
                module.model,
                module.guide,
                x,
                num_samples=num_samples,
                sample_chunk=sample_chunk,
                batch_size=batch_size,
            )
    finally:
        module.train(was_training)


def evaluate(
    module,
    x: torch.Tensor,
    num_samples: int = 5000,
    elbo_samples: int = 10,
    sample_chunk: int = 100,
    batch_size: int = 500,
    analytic_kl: bool = False,
) -> dict[str, float]:
    """Test metrics per example (nats) as a JSON-able dict.

    Keys: ``elbo``, ``reconstruction``, ``kl`` (means of [`elbo_terms`][] with
    ``elbo_samples`` samples), ``log_likelihood`` and ``nll`` (mean of [`importance_nll`][]
    with K = ``num_samples``; omitted when ``num_samples=0``), ``nll_stderr`` (the standard
    error of that mean over the data points), ``num_examples`` and ``num_importance_samples``.
    """
    out = elbo_terms(
        module, x, num_samples=elbo_samples, batch_size=max(batch_size, 1), analytic_kl=analytic_kl
    ).summary()
    out["num_examples"] = int(x.shape[0])
    if num_samples:
        log_px = importance_nll(module, x, num_samples, sample_chunk, batch_size)
        out["log_likelihood"] = float(log_px.mean())
        out["nll"] = -out["log_likelihood"]
        spread = float(log_px.std()) if x.shape[0] > 1 else float("nan")
        out["nll_stderr"] = spread / math.sqrt(x.shape[0])
        out["num_importance_samples"] = int(num_samples)
    return out


def held_out_bound_callback(
    x: torch.Tensor,
    num_samples: int = 50,
    name: str | None = None,
    batch_size: int = 500,
):
    """A ``fit`` callback: the mean K-sample importance-weighted bound per example on ``x``.

    Returns ``{name: mean over the rows of log (1/K) sum_k w_k}`` (nats; higher is better) every
    epoch, from [`importance_nll`][] with K = ``num_samples``. Give it held-out rows (a part of the
    training set kept out of training) and ``select_metric=name, select_mode="max"`` to keep the
    best epoch in ``best.pt``. The images must be fixed (binarised once), so that the epochs are
    compared on the same data.

    Args:
        x: held-out data [V, D].
        num_samples: K (default 50).
        name: the history key (default ``f"val_bound_k{K}"``).
        batch_size: rows per evaluation batch (default 500).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    key = name or f"val_bound_k{num_samples}"

    def callback(info) -> dict[str, float]:
        if info.module is None:
            raise ValueError("held_out_bound_callback needs fit to train a module")
        log_px = importance_nll(info.module, x, num_samples, sample_chunk=num_samples,
                                batch_size=batch_size)
        return {key: float(log_px.mean())}

    return callback
