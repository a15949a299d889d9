"""The data sets of a run, built one way for the command line and the experiments alike.

One binarisation vocabulary (`BINARIZATIONS`): training images binarised afresh every epoch
(``"dynamic"``), once (``"static"``), or kept as grey levels in [0, 1] (``"grey"``, scored by a
Bernoulli likelihood with ``allow_continuous=True``). Colour images are never binarised. One
seed table (`SEEDS`): the held-out test set of a data set is the same binarisation in every run
of every front end, whatever the run's seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from pyrovae.data import (
    DynamicBinarized,
    LabelledStream,
    M1Codes,
    binarize,
    encode_in_chunks,
    labelled_split,
    load_dataset,
)
from pyrovae.data.streams import SemiSupervisedData, active_dimensions
from pyrovae.runs.launch import RunError

BINARIZATIONS = ("dynamic", "static", "grey")
#: Seeds of the fixed binarisations: ``test`` is one for every run; the others are offsets
#: added to the run's seed (validation images; the images that pick M1's active dimensions).
SEEDS = {"test": 1234, "validation": 10_000, "m1_activity": 30_000}
#: The colour data sets: never binarised (a coin flip per channel would destroy the colours).
COLOUR_DATASETS = ("svhn", "celeba")


def check_binarization(binarization: str) -> str:
    """``binarization`` if it is one of `BINARIZATIONS` (``"none"`` is read as ``"grey"``)."""
    binarization = "grey" if binarization == "none" else binarization
    if binarization not in BINARIZATIONS:
        raise RunError(f"binarization must be one of {', '.join(BINARIZATIONS)}, got "
                       f"{binarization!r}")
    return binarization


def channels_first(image_shape) -> tuple[int, int, int]:
    """A data set's ``image_shape`` as ``(C, H, W)``: grey ``(H, W)`` gets ``C = 1``."""
    shape = tuple(int(s) for s in image_shape)
    return (1, *shape) if len(shape) == 2 else shape


def test_images(x: torch.Tensor, binarization: str) -> torch.Tensor:
    """The held-out images as every run scores them: one fixed binarisation, or grey levels."""
    return x if binarization == "grey" else binarize(x, SEEDS["test"])


def _training_stream(x: torch.Tensor, binarization: str, seed: int, y=None):
    if binarization == "grey":
        return (x,) if y is None else (x, y)
    if binarization == "static":
        return (binarize(x, seed),) if y is None else (binarize(x, seed), y)
    return DynamicBinarized(x, seed) if y is None else LabelledStream(x, y, seed)


@dataclass
class ImageSet:
    """Images for an unsupervised run, on one device.

    ``train`` is what ``fit`` gets (a stream for binarised images, else the grey levels);
    ``train_x``/``train_y`` the grey-level training images and labels; ``test_x`` the test
    images as the model scores them (`test_images`), ``test_y`` their labels.
    """

    name: str
    train: Any
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    image_shape: tuple[int, ...]
    binarization: str

    @property
    def data_dim(self) -> int:
        return self.test_x.shape[1]

    @property
    def num_train(self) -> int:
        return self.train_x.shape[0]

    @property
    def binarized(self) -> bool:
        return self.binarization != "grey"

    @property
    def colour(self) -> bool:
        return len(self.image_shape) == 3

    def train_images(self, epoch: int = 0) -> torch.Tensor:
        """The training images as the model sees them in ``epoch``."""
        if self.binarization == "dynamic":
            return self.train.for_epoch(epoch)[0]
        return self.train[0]


def image_set(
    dataset: str, *, binarization: str = "dynamic", seed: int = 0,
    train_size: int | None = None, test_size: int | None = None,
    root: str | os.PathLike | None = None, download: bool = True,
    device: torch.device | str | None = None, image_size: int = 64,
) -> ImageSet:
    """The first ``train_size`` training and ``test_size`` test images of ``dataset`` (CelebA's
    ``image_size`` pixels a side), binarised as ``binarization`` says (colour: never)."""
    binarization = check_binarization(binarization)
    train, test = (
        load_dataset(dataset, split, root=root, download=download, device=device,
                     image_size=image_size, limit=size)
        for split, size in [("train", train_size), ("test", test_size)]
    )
    if len(train.image_shape) == 3:
        binarization = "grey"
    return ImageSet(
        name=train.name, train=_training_stream(train.x, binarization, seed),
        train_x=train.x, train_y=train.y, test_x=test_images(test.x, binarization),
        test_y=test.y, image_shape=tuple(train.image_shape), binarization=binarization,
    )


def semi_supervised_set(
    dataset: str, *, n_labelled: int, n_validation: int, seed: int,
    binarization: str = "dynamic", limit: int | None = None,
    root: str | os.PathLike | None = None, download: bool = True,
    device: torch.device | str | None = None, m1=None, m1_min_std: float = 0.0,
) -> SemiSupervisedData:
    """A class-balanced labelled set of ``n_labelled`` images (``labelled_split``, seeded), a
    validation set of ``n_validation``, the rest unlabelled. ``limit`` keeps the first
    ``limit`` training and test images. Colour images keep their grey levels.

    Training images as ``binarization`` says (labelled ones with seed ``seed + 1``),
    validation images binarised once (``SEEDS["validation"] + seed``), test images as
    `test_images`. With an M1 VAE ``m1`` (M1+M2; on ``device``), the data are M1's codes
    instead: fresh draws of ``q(z1 | x)`` every epoch for training (`M1Codes`), the posterior
    means of the validation and test images; with ``m1_min_std`` > 0 only M1's active
    dimensions (posterior-mean std above it) are kept.
    """
    binarization = check_binarization(binarization)
    train, test = (load_dataset(dataset, split, root=root, download=download, device=device,
                                limit=limit) for split in ("train", "test"))
    if len(train.image_shape) == 3:
        binarization = "grey"
    x, y = train.x, train.y
    split = labelled_split(y, n_labelled, n_validation, seed, num_classes=train.num_classes)
    x_l, y_l, x_u = x[split.labelled], y[split.labelled], x[split.unlabelled]
    grey = binarization == "grey"
    x_val = x[split.validation]
    x_val = x_val if grey else binarize(x_val, SEEDS["validation"] + seed)
    x_test = test_images(test.x, binarization)
    keep = None
    if m1 is None:
        unlabelled = _training_stream(x_u, binarization, seed)
        labelled = _training_stream(x_l, binarization, seed + 1, y_l)
    else:
        if binarization == "static":
            raise RunError("M1 codes are drawn afresh every epoch: use binarization 'dynamic' "
                           "(or 'grey' for an M1 of grey levels)")
        if m1_min_std > 0:
            x_activity = x_u if grey else binarize(x_u, SEEDS["m1_activity"] + seed)
            keep, _ = active_dimensions(m1, x_activity, m1_min_std)
            if len(keep) == 0:
                raise RunError(f"no M1 dimension has a posterior-mean std above {m1_min_std}")
        unlabelled = M1Codes(m1, x_u, seed, keep=keep, binarize=not grey)
        labelled = M1Codes(m1, x_l, seed + 1, y_l, keep=keep, binarize=not grey)
        x_val, x_test = encode_in_chunks(m1, x_val)[0], encode_in_chunks(m1, x_test)[0]
        if keep is not None:
            x_val, x_test = x_val[:, keep], x_test[:, keep]
    return SemiSupervisedData(
        name=train.name, unlabelled=unlabelled, labelled=labelled, x_val=x_val,
        y_val=y[split.validation], x_test=x_test, y_test=test.y,
        num_train=len(split.labelled) + len(split.unlabelled),
        image_shape=tuple(train.image_shape), num_classes=train.num_classes,
        m1_dims_kept=None if m1 is None else (
            list(range(x_val.shape[1])) if keep is None else keep.tolist()),
    )
