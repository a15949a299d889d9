"""The VAE family of a run: its data, its model built from the run's options, its test-ELBO
callback and its test metrics. ``pyrovae vae`` and ``experiments/vae`` both build through here.

A run's options are a dict (the command line's ``options.json``, or a script's ``vars(args)``)
with the constructor's names: ``latent_dim``, ``hidden_sizes``, ``arch``, ``activation``,
``likelihood``, ``sigma``, and ``model``: which class of `MODELS` to build (default ``"vae"``),
with that class's own options. A new kind of VAE (a beta-VAE, a VampPrior VAE) is one entry of
`MODELS`: ``pyrovae vae train --model NAME`` and every ``experiments/vae`` script then build it
(see docs/architecture.md, "Adding a model").
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pyrovae.infer import History, TimeBudget, fit
from pyrovae.infer.evaluation import elbo_terms, evaluate
from pyrovae.models.vae import VAE
from pyrovae.runs.data import COLOUR_DATASETS, ImageSet, channels_first, image_set
from pyrovae.runs.launch import positive_float, positive_int

#: ``--model`` name -> (the class, its options beyond the VAE's: name -> (type, default, help)).
MODELS: dict[str, tuple[type[VAE], dict[str, tuple[type, Any, str]]]] = {"vae": (VAE, {})}

#: The options `build` reads, with the command line's defaults.
DEFAULTS = {"latent_dim": 20, "hidden_sizes": [400], "arch": "mlp", "activation": "relu",
            "likelihood": "bernoulli", "sigma": 0.1}


def binarization(options: dict[str, Any]) -> str:
    """``"dynamic"`` for a Bernoulli likelihood on grey images; colour images and the Gaussian
    likelihoods see the grey levels (``"grey"``)."""
    bernoulli = options.get("likelihood", "bernoulli") == "bernoulli"
    return "dynamic" if bernoulli and options["dataset"] not in COLOUR_DATASETS else "grey"


def data(options: dict[str, Any], **where: Any) -> ImageSet:
    """The run's images: ``options``' ``dataset``, ``seed``, ``train_size``, ``test_size``
    and ``image_size`` (CelebA's side); ``where``: ``image_set``'s ``root``, ``download``,
    ``device``, and sizes that override the options'."""
    sizes = {key: options.get(key) for key in ("train_size", "test_size")}
    return image_set(options["dataset"], binarization=binarization(options),
                     seed=options.get("seed", 0), image_size=options.get("image_size", 64),
                     **{**sizes, **where})


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of a VAE run that ``pyrovae vae train`` and the ``experiments/vae``
    scripts share (each adds ``--latent-dim`` with its own default): the model (`MODELS`'
    ``--model`` and its options), its networks and likelihood, the data's sizes."""
    add = parser.add_argument
    add("--arch", default="mlp", choices=["mlp", "conv"],
        help="mlp (default) or conv (e.g. 28x28 grey, 32x32 or 64x64 colour)")
    add("--hidden-sizes", type=positive_int, nargs="+", default=[400],
        help="hidden widths of the encoder; the decoder mirrors them (default 400)")
    add("--activation", default="relu", help="nonlinearity (default relu)")
    add("--likelihood", default="bernoulli", choices=["bernoulli", "gaussian", "gaussian_learned"],
        help="bernoulli (default): dynamically binarised grey images, colour images as they "
        "are; Gaussians: grey levels")
    add("--sigma", type=positive_float, default=0.1, help="noise of --likelihood gaussian (0.1)")
    add("--image-size", type=int, default=64, choices=[32, 64],
        help="celeba only: pixels a side (default 64)")
    add("--train-size", type=positive_int, default=None, help="first N training images (all)")
    add("--test-size", type=positive_int, default=None, help="first N test images (all)")
    add("--model", default="vae", choices=sorted(MODELS), help="which VAE (default vae)")
    for name, (_, own) in MODELS.items():
        for option, (kind, default, about) in own.items():
            parser.add_argument(f"--{option.replace('_', '-')}", type=kind, default=default,
                                help=f"{about} (--model {name}; default {default})")


def model_options(options: dict[str, Any]) -> dict[str, Any]:
    """``model`` and the options of that model (its defaults where ``options`` has none)."""
    name = options.get("model") or "vae"
    own = MODELS[name][1]
    return {"model": name, **{k: options.get(k, default) for k, (_, default, _) in own.items()}}


def build(options: dict[str, Any], data: ImageSet, **overrides: Any) -> VAE:
    """The VAE of a run on ``data`` (the one call of its constructor in both front ends): the
    class and options ``model_options`` names; the networks take ``data``'s image shape; a
    Bernoulli likelihood scores grey levels (``allow_continuous``) where the images are not
    binarised. ``overrides``: other keyword arguments (e.g. ``reparameterized=False``)."""
    chosen = {key: options.get(key, default) for key, default in DEFAULTS.items()}
    own = model_options(options)
    model_class = MODELS[own.pop("model")][0]
    return model_class(
        data_dim=data.data_dim, image_shape=channels_first(data.image_shape),
        allow_continuous=chosen["likelihood"] == "bernoulli" and not data.binarized,
        **{**chosen, "hidden_sizes": list(chosen["hidden_sizes"])}, **own, **overrides,
    ).to(data.test_x.device)


def train(
    model: VAE, stream: Any, options: dict[str, Any], *, device: torch.device,
    out: Path | None = None, resume: bool = False, minutes: float | None = None,
    callbacks=(), on_epoch: Callable[[list[dict]], None] | None = None, **fit_options: Any,
) -> tuple[History, float]:
    """The one training loop of a VAE run (``pyrovae vae train``/``resume`` and every
    ``experiments`` script that trains a VAE): ``fit`` on ``stream`` (an `ImageSet`'s
    ``train``) with ``options``' ``epochs``, ``batch_size``, ``lr``, ``seed``, ``objective``,
    ``num_particles``, ``devices`` and ``num_nodes``; checkpoints in ``out`` (continued from
    ``out/last.pt`` with ``resume``); stopped by ``TimeBudget(minutes)``. ``on_epoch(rows)``
    gets the history rows so far after every epoch and at the end; ``fit_options``: ``fit``'s
    other arguments. Returns the ``History`` (earlier invocations' epochs included) and this
    invocation's seconds."""
    started = time.perf_counter()
    report = [lambda end: on_epoch([*end.history.epochs, end.row])] if on_epoch else []
    history = fit(
        model, stream, epochs=options["epochs"], batch_size=options["batch_size"],
        lr=options["lr"], seed=options["seed"], objective=options.get("objective", "elbo"),
        num_particles=options.get("num_particles", 1), device=device,
        devices=options.get("devices") or 1, num_nodes=options.get("num_nodes") or 1,
        checkpoint_dir=out, resume=resume,
        callbacks=[*callbacks, *report, TimeBudget(minutes)], **fit_options,
    )
    if on_epoch:
        on_epoch(history.epochs)
    return history, time.perf_counter() - started


def test_elbo_callback(x: torch.Tensor, every: int = 1, epochs: int | None = None,
                       num_samples: int = 1):
    """A ``fit`` callback: the ELBO and its terms on ``x`` (``test_elbo``,
    ``test_reconstruction``, ``test_kl``...) every ``every`` epochs and at epoch ``epochs``."""

    def callback(end) -> dict[str, float]:
        if (end.epoch + 1) % every and end.epoch + 1 != epochs:
            return {}
        terms = elbo_terms(end.module, x, num_samples=num_samples).summary()
        end.module.train()
        return {f"test_{k}": v for k, v in terms.items()}

    return callback


def metrics(
    model: VAE, x: torch.Tensor, *, num_samples: int, elbo_samples: int = 10,
    eval_examples: int | None = None, batch_size: int = 100,
) -> dict[str, Any]:
    """Test ELBO terms on all of ``x`` and the importance-sampled NLL (``num_samples`` samples;
    0 skips it) on its first ``eval_examples`` rows, nats per image."""
    result = {"all_test": evaluate(model, x, num_samples=0, elbo_samples=elbo_samples)}
    if num_samples:
        result["subset"] = evaluate(
            model, x[:eval_examples], num_samples=num_samples, elbo_samples=elbo_samples,
            sample_chunk=max(1, min(num_samples, 500)), batch_size=batch_size,
        )
    return result
