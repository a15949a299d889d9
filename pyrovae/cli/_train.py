"""Training and evaluation recipes shared by the ``pyrovae vae`` and ``pyrovae m2`` subcommands.

Library functions (they log, never print): the data as a VAE or M2 sees it, the metrics of a
trained model, and an image grid. The experiments in ``experiments/vae/common.py``
(``Data``, ``test_metrics``) and ``experiments/m2/common.py`` (``prepare_data``,
``test_error``) do the same for their scripts and could call these instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch

from pyrovae.data import DynamicBinarized, LabelledStream, binarize, labelled_split, load_dataset
from pyrovae.data.streams import SemiSupervisedData
from pyrovae.infer import param_scope
from pyrovae.infer.classification import accuracy
from pyrovae.infer.evaluation import evaluate
from pyrovae.plots import save_image_grid

logger = logging.getLogger(__name__)

#: The one fixed stochastic binarisation of every test set (as the VAE experiments).
TEST_BINARIZATION_SEED = 1234
VALIDATION_BINARIZATION_SEED = 10_000
#: The colour data sets: never binarised (a coin flip per channel would destroy the colours);
#: a Bernoulli likelihood scores their grey levels (``allow_continuous=True``).
COLOUR_DATASETS = ("svhn", "celeba")


def channels_first(image_shape) -> tuple[int, int, int]:
    """A data set's ``image_shape`` as ``(C, H, W)``: grey ``(H, W)`` gets ``C = 1``."""
    shape = tuple(int(s) for s in image_shape)
    return (1, *shape) if len(shape) == 2 else shape


@dataclass
class ImageSet:
    """Training data for a VAE and its test images, on one device.

    ``train`` is what ``fit`` gets (a `DynamicBinarized` stream for
    Bernoulli likelihoods, else the grey levels); ``test_x`` the test images as the model
    scores them (one fixed binarisation for Bernoulli).
    """

    name: str
    train: Any
    test_x: torch.Tensor
    image_shape: tuple[int, ...]
    num_train: int

    @property
    def data_dim(self) -> int:
        return self.test_x.shape[1]


def image_set(
    dataset: str, *, binarized: bool, seed: int, train_size: int | None = None,
    test_size: int | None = None, root: str | os.PathLike | None = None, download: bool = True,
    device: torch.device | str | None = None, image_size: int = 64,
) -> ImageSet:
    """The first ``train_size`` training and ``test_size`` test images of ``dataset``
    (CelebA's ``image_size`` pixels a side, 64 or 32)."""
    train, test = (
        load_dataset(dataset, split, root=root, download=download, device=device,
                     image_size=image_size, limit=size)
        for split, size in [("train", train_size), ("test", test_size)]
    )
    x, x_test = train.x, test.x
    if binarized:
        stream, x_test = DynamicBinarized(x, seed), binarize(x_test, TEST_BINARIZATION_SEED)
    else:
        stream = x
    return ImageSet(train.name, stream, x_test, tuple(train.image_shape), x.shape[0])


def semi_supervised_set(
    dataset: str, *, n_labelled: int, n_validation: int, seed: int, limit: int | None = None,
    root: str | os.PathLike | None = None, download: bool = True,
    device: torch.device | str | None = None, binarized: bool = True,
) -> SemiSupervisedData:
    """A class-balanced labelled set of ``n_labelled`` images (``labelled_split``, seeded), a
    validation set of ``n_validation``, the rest unlabelled; with ``binarized`` (default)
    training images binarised afresh every epoch, validation and test images once, else the
    grey levels as they are. ``limit`` keeps the first ``limit`` training and test images."""
    train, test = (load_dataset(dataset, split, root=root, download=download, device=device,
                                limit=limit) for split in ("train", "test"))
    x, y, x_test, y_test = train.x, train.y, test.x, test.y
    split = labelled_split(y, n_labelled, n_validation, seed, num_classes=train.num_classes)
    x_val = x[split.validation]
    if binarized:
        unlabelled = DynamicBinarized(x[split.unlabelled], seed)
        labelled = LabelledStream(x[split.labelled], y[split.labelled], seed + 1)
        x_val = binarize(x_val, VALIDATION_BINARIZATION_SEED + seed)
        x_test = binarize(x_test, TEST_BINARIZATION_SEED)
    else:
        unlabelled, labelled = x[split.unlabelled], (x[split.labelled], y[split.labelled])
    return SemiSupervisedData(
        name=train.name,
        unlabelled=unlabelled,
        labelled=labelled,
        x_val=x_val,
        y_val=y[split.validation],
        x_test=x_test,
        y_test=y_test,
        image_shape=tuple(train.image_shape),
        num_train=len(split.labelled) + len(split.unlabelled),
        num_classes=train.num_classes,
    )


def vae_metrics(
    model, x: torch.Tensor, *, num_samples: int, elbo_samples: int = 10,
    eval_examples: int | None = None, batch_size: int = 100,
) -> dict[str, Any]:
    """Test ELBO terms on all of ``x`` and the importance-sampled NLL (``num_samples`` samples;
    0 skips it) on its first ``eval_examples`` rows, nats per image."""
    metrics = {"all_test": evaluate(model, x, num_samples=0, elbo_samples=elbo_samples)}
    if num_samples:
        subset = x[:eval_examples]
        metrics["subset"] = evaluate(
            model, subset, num_samples=num_samples, elbo_samples=elbo_samples,
            sample_chunk=max(1, min(num_samples, 500)), batch_size=batch_size,
        )
    return metrics


@torch.no_grad()
def m2_unlabelled_bound(model, x: torch.Tensor, batch_size: int = 500) -> float:
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

    def __init__(self, m2) -> None:
        super().__init__()
        self.m2 = m2

    def model(self, x, subsample=None):
        return self.m2.model(x, subsample=subsample)

    def guide(self, x, subsample=None):
        def sampled(msg):
            return {"enumerate": None} if msg["name"] == "y" else {}

        return pyro.poutine.infer_config(self.m2.guide, sampled)(x, subsample=subsample)


def m2_metrics(model, x: torch.Tensor, y: torch.Tensor, *, num_samples: int,
               eval_examples: int | None = None) -> dict[str, Any]:
    """Test error of ``argmax q(y|x)``, the unlabelled bound and (``num_samples`` > 0) the
    importance-sampled NLL on the first ``eval_examples`` images (y drawn from ``q(y|x)``)."""
    with param_scope(model):
        error = 1.0 - accuracy(model.classify, x, y, num_classes=model.num_classes)
    metrics: dict[str, Any] = {
        "test_error": error, "num_examples": int(x.shape[0]),
        "elbo": m2_unlabelled_bound(model, x),
    }
    if num_samples:
        subset = evaluate(SampledLabels(model), x[:eval_examples], num_samples=num_samples,
                          elbo_samples=1, sample_chunk=max(1, min(num_samples, 200)),
                          batch_size=100)
        metrics["nll"] = subset["nll"]
        metrics["nll_stderr"] = subset["nll_stderr"]
        metrics["nll_examples"] = subset["num_examples"]
        metrics["num_importance_samples"] = num_samples
    return metrics


def save_grid(images: torch.Tensor, image_shape: tuple[int, ...], columns: int,
              path: str | os.PathLike, **labels: Any) -> Path:
    """Tile ``images`` [N, D] (values in [0, 1]) into a grid ``columns`` wide; save a PNG,
    upscaled and labelled by [`pyrovae.plots.save_image_grid`][] (``labels``: ``title``,
    ``row_labels``, ``col_labels``).

    ``image_shape`` is ``(H, W)`` or ``(1, H, W)`` for grey images and ``(3, H, W)`` for colour
    ones, flattened channel-major.
    """
    channels, _, _ = channels_first(image_shape)
    if channels not in (1, 3):
        raise ValueError(f"a grid shows grey or RGB images, got {channels} channels")
    return save_image_grid(path, images.detach().float().cpu().clamp(0, 1), image_shape,
                           nrow=columns, **labels)
