"""The VAE 784-400-20 in NumPyro, one whole epoch compiled: ``lax.fori_loop`` under ``jit``.

The same networks as ``pyrovae.models.VAE(784, 20, (400,))`` (ReLU MLPs, guide scale
``softplus + 1e-4``, Bernoulli logits) and the same objective: the single-sample ELBO of a
minibatch of B rows scaled by N/B, Adam. The epoch is one XLA program: the host launches it
once and waits once. Imported only when ``benchmarks.gpu.run`` is given ``--numpyro`` (jax and
numpyro are optional).
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as ndist
from numpyro.infer import SVI, Trace_ELBO
from numpyro.optim import Adam


def _linear(key, n_in: int, n_out: int, name: str) -> dict:
    """PyTorch's ``nn.Linear`` initialisation: uniform in +-1/sqrt(n_in)."""
    bound = 1.0 / math.sqrt(n_in)
    k_w, k_b = jax.random.split(key)
    return {
        f"{name}_w": jax.random.uniform(k_w, (n_in, n_out), minval=-bound, maxval=bound),
        f"{name}_b": jax.random.uniform(k_b, (n_out,), minval=-bound, maxval=bound),
    }


def initial_params(key, data_dim: int, hidden: int, latent_dim: int) -> dict:
    keys = jax.random.split(key, 5)
    params = {}
    params.update(_linear(keys[0], data_dim, hidden, "enc"))
    params.update(_linear(keys[1], hidden, latent_dim, "loc"))
    params.update(_linear(keys[2], hidden, latent_dim, "scale"))
    params.update(_linear(keys[3], latent_dim, hidden, "dec"))
    params.update(_linear(keys[4], hidden, data_dim, "out"))
    return params


def _dense(p, name, h):
    return h @ p[f"{name}_w"] + p[f"{name}_b"]


def make_vae(init: dict, num_data: int, latent_dim: int):
    """``model(x)`` and ``guide(x)`` for minibatches of ``num_data`` rows in all."""

    def params(names):
        return {n: numpyro.param(n, init[n]) for n in names}

    decoder_names = ["dec_w", "dec_b", "out_w", "out_b"]
    encoder_names = ["enc_w", "enc_b", "loc_w", "loc_b", "scale_w", "scale_b"]

    def model(x):
        p = params(decoder_names)
        with (
            numpyro.handlers.scale(scale=num_data / x.shape[0]),
            numpyro.plate("batch", x.shape[0]),
        ):
            z = numpyro.sample("z", ndist.Normal(jnp.zeros(latent_dim), 1.0).to_event(1))
            logits = _dense(p, "out", jax.nn.relu(_dense(p, "dec", z)))
            numpyro.sample("x", ndist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        p = params(encoder_names)
        with (
            numpyro.handlers.scale(scale=num_data / x.shape[0]),
            numpyro.plate("batch", x.shape[0]),
        ):
            h = jax.nn.relu(_dense(p, "enc", x))
            loc, scale = _dense(p, "loc", h), jax.nn.softplus(_dense(p, "scale", h)) + 1e-4
            numpyro.sample("z", ndist.Normal(loc, scale).to_event(1))

    return model, guide


def time_epochs(
    x: np.ndarray,
    batch_size: int = 128,
    hidden: int = 400,
    latent_dim: int = 20,
    lr: float = 1e-3,
    epochs: int = 3,
    seed: int = 0,
) -> dict:
    """Seconds per epoch of NumPyro SVI on binary images ``x`` [N, D] (first epoch untimed).

    Returns ``{"seconds": [...], "loss_per_example": last epoch's mean loss / N, "device": ...}``
    over ``epochs`` timed epochs after one warm-up epoch (which includes compilation).
    """
    n, d = x.shape
    steps = n // batch_size
    key = jax.random.PRNGKey(seed)
    key, k_init, k_svi = jax.random.split(key, 3)
    model, guide = make_vae(initial_params(k_init, d, hidden, latent_dim), n, latent_dim)
    svi = SVI(model, guide, Adam(lr), Trace_ELBO())
    data = jnp.asarray(x, dtype=jnp.float32)
    state = svi.init(k_svi, data[:batch_size])

    @jax.jit
    def epoch(state, data, perm):
        def body(i, carry):
            state, total = carry
            idx = jax.lax.dynamic_slice(perm, (i * batch_size,), (batch_size,))
            state, loss = svi.update(state, data[idx])
            return state, total + loss

        return jax.lax.fori_loop(0, steps, body, (state, jnp.zeros(())))

    seconds, total = [], None
    for _ in range(epochs + 1):
        key, k_perm = jax.random.split(key)
        perm = jax.random.permutation(k_perm, n)
        perm.block_until_ready()
        started = time.perf_counter()
        state, total = epoch(state, data, perm)
        total.block_until_ready()
        seconds.append(time.perf_counter() - started)
    return {
        "seconds": seconds[1:],
        "warmup_seconds": seconds[0],
        "steps_per_epoch": steps,
        "loss_per_example": float(total) / steps / n,
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "numpyro": numpyro.__version__,
    }
