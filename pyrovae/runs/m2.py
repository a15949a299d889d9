"""The M2 family of a run: its options resolved against a preset, its data, its model (always
built by [`M2Preset.build`][pyrovae.runs.m2_presets.M2Preset.build]) and its test metrics.
``pyrovae m2`` and ``experiments/m2`` both build through here.

A run's options are a dict (the command line's ``options.json``, or a script's ``vars(args)``):
``preset`` (default ``"pyrovae"``) and any of `PRESET_OPTIONS`, where None means "the
preset's".
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import torch

from pyrovae.data.streams import SemiSupervisedData
from pyrovae.infer import History, TimeBudget, fit, param_scope
from pyrovae.infer.classification import accuracy, validation_callback
from pyrovae.infer.evaluation import evaluate
from pyrovae.models.m2 import M2
from pyrovae.runs.data import BINARIZATIONS, channels_first, semi_supervised_set
from pyrovae.runs.launch import positive_float, positive_int
from pyrovae.runs.m2_presets import PRESETS, M2Preset, m2_preset

DEFAULT_PRESET = "pyrovae"
#: Options a preset sets, and where in `M2Preset` each lives.
MODEL_OPTIONS = ("latent_dim", "hidden_sizes", "arch", "classifier_arch", "activation",
                 "labelled_weight", "init_scale", "analytic_kl")
RECIPE_OPTIONS = {"binarization": "input", "alpha_factor": "alpha_factor",
                  "alpha_per_labelled": "alpha_per_labelled", "lr": "lr", "adam_betas": "betas",
                  "batch_size": "batch_size", "labelled_batch_size": "labelled_batch_size",
                  "epochs": "epochs", "batches_per_epoch": "batches_per_epoch",
                  "objective": "objective", "precision": "precision", "threads": "threads",
                  "step_scheme": "step_scheme", "lr_decay": "lr_decay"}
PRESET_OPTIONS = (*MODEL_OPTIONS, *RECIPE_OPTIONS)
#: ``--init-scale``'s word for PyTorch's initialisation.
TORCH_INIT = "torch"


def add_options(parser: argparse.ArgumentParser) -> None:
    """``--preset`` and `PRESET_OPTIONS` as flags (default None: the preset's), for
    ``pyrovae m2 train`` and ``experiments.m2.mnist`` alike."""
    add = parser.add_argument
    add("--preset", default=DEFAULT_PRESET, choices=PRESETS,
        help=f"the recipe the options below default to (default {DEFAULT_PRESET}: "
        f"{', '.join(f'{k} {v}' for k, v in preset_options(DEFAULT_PRESET).items())}; "
        "conv_relu: experiments.m2.mnist's default before presets; see pyrovae.runs.m2_presets)")
    add("--latent-dim", type=positive_int, help="K")
    add("--hidden-sizes", type=positive_int, nargs="+", help="hidden widths of every network")
    add("--arch", choices=["mlp", "conv"], help="networks of q(z|x,y) and p(x|y,z): mlp or conv "
        "(e.g. 28x28 grey or 32x32 colour)")
    add("--classifier-arch", choices=["mlp", "conv"], help="network of q(y|x): mlp or conv")
    add("--activation", help="nonlinearity")
    add("--alpha-factor", type=positive_float, help="classifier weight alpha = factor x N_train")
    add("--alpha-per-labelled", type=positive_float,
        help="alpha = this x N_labelled instead (Pyro's aux-loss multiplier)")
    add("--labelled-weight", help="weight of the supervised bound: a number, or 'balanced' = "
        "N_u / N_l")
    add("--init-scale", type=init_scale, help="redraw every parameter from N(0, s^2) after "
        "construction (Kingma et al.: 1e-3); 'torch': PyTorch's initialisation (where a preset "
        "sets a scale)")
    add("--analytic-kl", action=argparse.BooleanOptionalAction,
        help="KL(q(z|x,y) || p(z)) in closed form (Kingma's code)")
    add("--binarization", choices=BINARIZATIONS, help="training images binarised afresh every "
        "epoch, once, or kept as grey levels (the papers' input, allow_continuous=True)")
    add("--epochs", type=positive_int, help="training epochs (at most, with a time budget)")
    add("--batch-size", type=positive_int, help="unlabelled images per step and process")
    add("--labelled-batch-size", type=positive_int, help="labelled images per step")
    add("--batches-per-epoch", type=positive_int, help="cut the unlabelled and the labelled set "
        "into this many batches each (Kingma's scheme; overrides the batch sizes)")
    add("--lr", type=positive_float, help="Adam's learning rate")
    add("--lr-decay", type=positive_float, help="learning-rate factor per epoch")
    add("--step-scheme", choices=["joint", "alternating"], help="each step a batch of both "
        "sets (joint), or of one set in turn, each once per epoch (alternating: Pyro's example)")
    add("--adam-betas", type=float, nargs=2, help="Adam's betas")
    add("--objective", choices=["enum", "sum_and_sample"], help="the labels summed out exactly, "
        "or sum-and-sample (top 3 summed, one more sampled: unbiased, cheaper)")
    add("--precision", choices=["fp32", "bf16"], help="fit's precision (bf16: autocast)")


def preset_options(name: str) -> dict[str, Any]:
    """The options that the preset ``name`` sets, by option name."""
    preset = m2_preset(name)
    values = {key: preset.model[key] for key in MODEL_OPTIONS}
    values["hidden_sizes"] = list(values["hidden_sizes"])
    values.update({key: getattr(preset, field) for key, field in RECIPE_OPTIONS.items()})
    values["adam_betas"] = list(values["adam_betas"])
    return values


def init_scale(text: str) -> float | str:
    """argparse type of ``--init-scale``: a standard deviation > 0, or ``"torch"`` (PyTorch's
    own initialisation; ``None`` already means "the preset's")."""
    return TORCH_INIT if text == TORCH_INIT else positive_float(text)


def resolve(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with ``preset`` set and every preset option that is missing or None taken
    from the preset (an ``alpha_per_labelled`` given replaces the preset's ``alpha_factor``)."""
    name = options.get("preset") or DEFAULT_PRESET
    given = {k: v for k, v in options.items() if v is not None}
    if given.get("alpha_per_labelled") is not None:
        given["alpha_factor"] = None
    return {**options, **preset_options(name), **given, "preset": name}


def recipe(options: dict[str, Any]) -> M2Preset:
    """The run's recipe: its preset with the resolved options in place of the preset's."""
    options = resolve(options)
    preset = m2_preset(options["preset"])
    model = {key: options[key] for key in MODEL_OPTIONS if key != "labelled_weight"}
    if model["init_scale"] == TORCH_INIT:
        model["init_scale"] = None
    fields = {field: options[key] for key, field in RECIPE_OPTIONS.items()}
    fields["betas"] = tuple(fields["betas"])
    if fields["batches_per_epoch"] != preset.batches_per_epoch:
        fields["batches_per_epoch_by_labels"] = {}  # a scheme of its own
    return preset.replace(model=model, **fields)


def labelled_weight(option: Any, num_train: int, n_labelled: int) -> float:
    """The supervised bound's weight: a number, or ``"balanced"`` = N_u / N_l."""
    if option == "balanced":
        return (num_train - n_labelled) / n_labelled
    return float(option)


def data(options: dict[str, Any], m1=None, **where: Any) -> SemiSupervisedData:
    """The run's data (`semi_supervised_set`) from ``options``' ``dataset``, ``n_labelled``,
    ``n_validation``, ``seed``, ``limit``, ``binarization`` (the preset's if unset) and, with
    an M1 VAE ``m1``, ``m1_min_std``; ``where``: ``root``, ``download``, ``device``."""
    options = resolve(options)
    return semi_supervised_set(
        options["dataset"], n_labelled=options["n_labelled"],
        n_validation=options["n_validation"], seed=options["seed"],
        binarization=options["binarization"], limit=options.get("limit"), m1=m1,
        m1_min_std=options.get("m1_min_std") or 0.0, **where,
    )


def build(options: dict[str, Any], data: SemiSupervisedData, **overrides: Any) -> M2:
    """The M2 of a run on ``data``, built by its recipe's `M2Preset.build`: the data's sizes,
    classes and image shape; a Bernoulli likelihood scores grey levels where the images are not
    binarised; ``overrides``: other keyword arguments of `M2` (e.g. M1+M2's ``likelihood``)."""
    options = resolve(options)
    n_labelled = options["n_labelled"]
    data_dim = data.x_test.shape[1]
    image_shape = channels_first(data.image_shape)
    images = data_dim == math.prod(image_shape)  # not M1's codes
    grey = options["binarization"] == "grey" or len(data.image_shape) == 3
    model = dict(
        labelled_weight=labelled_weight(options["labelled_weight"], data.num_train, n_labelled),
        allow_continuous=images and grey, image_shape=image_shape if images else None,
    )
    return recipe(options).build(
        num_train=data.num_train, num_labelled=n_labelled, data_dim=data_dim,
        num_classes=data.num_classes or 10, **{**model, **overrides},
    )


def batch_sizes(options: dict[str, Any], num_train: int) -> tuple[int, int]:
    """(unlabelled, labelled) images per step of the run's recipe."""
    n_labelled = resolve(options)["n_labelled"]
    return recipe(options).batch_sizes(num_train - n_labelled, n_labelled)


class AdamWithBetas:
    """``fit``'s ``optimizer=``: ``torch.optim.Adam`` with given betas (e.g. Pyro's SS-VAE's
    (0.95, 0.999)). Its ``repr`` names the betas, so that a resumed run recognises it."""

    def __init__(self, betas: tuple[float, float]) -> None:
        self.betas = (float(betas[0]), float(betas[1]))

    def __call__(self, params, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, betas=self.betas)

    def __repr__(self) -> str:
        return f"AdamWithBetas({self.betas})"


def optimizer(options: dict[str, Any]) -> str | AdamWithBetas:
    """``fit``'s ``optimizer=`` for the recipe's Adam betas (``"adam"`` for torch's default)."""
    betas = tuple(resolve(options)["adam_betas"])
    return "adam" if betas == (0.9, 0.999) else AdamWithBetas(betas)


def train(
    model: M2, data: SemiSupervisedData, options: dict[str, Any], *, device: torch.device,
    out: Path | None, resume: bool = False, minutes: float | None = None, callbacks=(),
    on_epoch: Callable[[Any], None] | None = None, **fit_options: Any,
) -> tuple[History, float]:
    """The one training loop of an M2 run (``pyrovae m2 train``/``resume`` and the
    ``experiments/m2`` scripts): ``fit`` with the recipe's objective (``"enum"`` or
    ``"sum_and_sample"``) and precision on the unlabelled and
    labelled streams, the recipe's batch sizes, step scheme, Adam betas, ``lr``, ``lr_decay``
    per epoch, ``epochs`` and ``seed`` (``options`` resolved against their preset), ``jit``,
    ``devices`` and ``num_nodes``; the validation accuracy after every epoch selects
    ``out/best.pt``; checkpoints in ``out`` (continued from ``out/last.pt`` with ``resume``);
    stopped by ``TimeBudget(minutes)``. ``callbacks`` run after the validation one,
    ``on_epoch(end)`` after them; ``fit_options``: ``fit``'s other arguments. Returns the
    ``History`` and this invocation's seconds."""
    options = resolve(options)
    unlabelled, labelled = batch_sizes(options, data.num_train)
    decay = options["lr_decay"]
    started = time.perf_counter()
    history = fit(
        model, {"unlabelled": data.unlabelled, "labelled": data.labelled},
        objective=options["objective"], precision=options["precision"],
        step_scheme=options["step_scheme"],
        jit=options.get("jit", False), lr=options["lr"], optimizer=optimizer(options),
        lr_schedule=f"exponential:{decay}" if decay != 1 else None, epochs=options["epochs"],
        batch_size={"unlabelled": unlabelled, "labelled": labelled}, seed=options["seed"],
        device=device, devices=options.get("devices") or 1,
        num_nodes=options.get("num_nodes") or 1, checkpoint_dir=out, resume=resume,
        callbacks=[validation_callback(data.x_val, data.y_val), *callbacks,
                   *([on_epoch] if on_epoch else []), TimeBudget(minutes)],
        select_metric="val_accuracy", **fit_options,
    )
    return history, time.perf_counter() - started


# ---------------------------------------------------------------------------------- metrics
def test_error(model: M2, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of the examples misclassified by ``argmax q(y|x)``."""
    with param_scope(model):
        return 1.0 - accuracy(model.classify, x, y, num_classes=model.num_classes)


def generative_error(model: M2, x: torch.Tensor, y: torch.Tensor, num_samples: int = 1,
                     batch_size: int = 500) -> float:
    """Fraction misclassified by ``argmax_k L(x, k)``, the generative model's own classification."""
    with param_scope(model):
        guesses = torch.cat([model.class_elbos(xb, num_samples).argmax(-1)
                             for xb in x.split(batch_size)])
    return float((guesses != y).double().mean())


@torch.no_grad()
def unlabelled_bound(model: M2, x: torch.Tensor, batch_size: int = 500) -> float:
    """The mean unlabelled bound ``U(x)`` (y summed out, one z sample per class), nats/image."""
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    total = 0.0
    was_training = model.training
    model.eval()
    try:
        with param_scope(model):
            for xb in x.split(batch_size):
                total -= float(elbo.loss(model.model, model.guide, xb))
    finally:
        model.train(was_training)
    return total / x.shape[0]


class SampledLabels(torch.nn.Module):
    """M2 with its guide's label drawn from ``q(y|x)`` rather than enumerated, so that the
    importance sampler (which needs every guide site sampled) can score it: with ``y`` and
    ``z`` both proposed by the guide, the weights ``p(x, y, z) / q(y|x) q(z|x, y)`` still
    estimate ``p(x)`` without bias."""

    def __init__(self, m2: M2) -> None:
        super().__init__()
        self.m2 = m2

    def model(self, x, subsample=None):
        return self.m2.model(x, subsample=subsample)

    def guide(self, x, subsample=None):
        def sampled(msg):
            return {"enumerate": None} if msg["name"] == "y" else {}

        return pyro.poutine.infer_config(self.m2.guide, sampled)(x, subsample=subsample)


def metrics(model: M2, x: torch.Tensor, y: torch.Tensor, *, num_samples: int,
            eval_examples: int | None = None) -> dict[str, Any]:
    """Test error of ``argmax q(y|x)``, the unlabelled bound and (``num_samples`` > 0) the
    importance-sampled NLL on the first ``eval_examples`` images (y drawn from ``q(y|x)``)."""
    result: dict[str, Any] = {"test_error": test_error(model, x, y),
                              "num_examples": int(x.shape[0]),
                              "elbo": unlabelled_bound(model, x)}
    if num_samples:
        subset = evaluate(SampledLabels(model), x[:eval_examples], num_samples=num_samples,
                          elbo_samples=1, sample_chunk=max(1, min(num_samples, 200)),
                          batch_size=100)
        result.update(nll=subset["nll"], nll_stderr=subset["nll_stderr"],
                      nll_examples=subset["num_examples"], num_importance_samples=num_samples)
    return result

