"""Data sets and transforms.

``load_dataset(name, split)`` returns an [`ImageData`][] with flattened images scaled to
[0, 1]; the transforms binarise them and split labels for semi-supervised training::

    from pyrovae.data import DynamicBinarized, labelled_split, load_dataset

    train = load_dataset("mnist", "train")            # x: [60000, 784], y: [60000]
    stream = DynamicBinarized(train.x, seed=0)        # stream.for_epoch(epoch) -> (x_bin,)
    split = labelled_split(train.y, n_labelled=100, n_validation=10000, seed=0)

Files live under [`data_root`][] (``$PYROVAE_DATA`` or ``~/.cache/pyrovae``) in torchvision's
layout; see [`pyrovae.data.mnist`][], ``pyrovae.data.svhn`` (colour 32x32 digits) and
``pyrovae.data.celeba`` (colour faces, 64x64 or 32x32). The ``"digits"`` set ships with
scikit-learn.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from pyrovae.data.celeba import load_celeba_arrays
from pyrovae.data.digits import MAX_VALUE as DIGITS_MAX_VALUE
from pyrovae.data.digits import load_digits_arrays
from pyrovae.data.idx import IDXError, read_idx
from pyrovae.data.mnist import (
    DATASET_NAMES,
    ChecksumError,
    DatasetNotFoundError,
    canonical_name,
    data_root,
    ensure_files,
    load_mnist_arrays,
)
from pyrovae.data.sketches import SketchData, load_sketches
from pyrovae.data.smiles import SmilesVocabulary, load_smiles
from pyrovae.data.streams import LabelledStream, M1Codes, SemiSupervisedData, encode_in_chunks
from pyrovae.data.svhn import load_svhn_arrays
from pyrovae.data.transforms import (
    DynamicBinarized,
    SplitIndices,
    binarize,
    labelled_split,
    threshold,
)

__all__ = [
    "DATASET_NAMES",
    "ChecksumError",
    "DatasetNotFoundError",
    "DynamicBinarized",
    "IDXError",
    "ImageData",
    "LabelledStream",
    "M1Codes",
    "SemiSupervisedData",
    "SketchData",
    "SmilesVocabulary",
    "SplitIndices",
    "binarize",
    "data_root",
    "encode_in_chunks",
    "ensure_files",
    "labelled_split",
    "load_dataset",
    "load_sketches",
    "load_smiles",
    "read_idx",
    "threshold",
]


@dataclass(frozen=True, eq=False)
class ImageData:
    """One split of an image data set.

    Attributes:
        x: images flattened to ``[N, D]`` with ``D`` the product of ``image_shape``, floating,
            values in [0, 1] (colour images flattened channel by channel).
        y: labels ``[N]``, ``torch.long``, in ``0..num_classes-1``, on ``x``'s device; for
            CelebA its binary attributes ``[N, 40]`` (``torch.long``, 0/1).
        image_shape: ``(H, W)``: ``(28, 28)`` for MNIST/Fashion-MNIST, ``(8, 8)`` for digits;
            ``(3, H, W)`` for colour sets: ``(3, 32, 32)`` for SVHN, ``(3, S, S)`` for CelebA.
        num_classes: number of classes (10 for the digit sets; 2 for CelebA's attributes).
        name: canonical data set name, e.g. ``"fashion-mnist"``.
        attribute_names: CelebA's 40 attribute names (the columns of ``y``), else ``None``.
    """

    x: Tensor
    y: Tensor
    image_shape: tuple[int, ...]
    num_classes: int
    name: str
    attribute_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.x.dim() != 2 or self.x.shape[1] != math.prod(self.image_shape):
            raise ValueError(
                f"x must have shape [N, {math.prod(self.image_shape)}] for images of shape "
                f"{self.image_shape}, got {tuple(self.x.shape)}"
            )
        if self.y.shape[:1] != self.x.shape[:1] or self.y.dim() != (
            1 if self.attribute_names is None else 2
        ):
            want = f"[{self.x.shape[0]}]" if self.attribute_names is None else (
                f"[{self.x.shape[0]}, {len(self.attribute_names)}]")
            raise ValueError(f"y must have shape {want}, got {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return self.x.shape[0]


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    image_size: int = 64,
    limit: int | None = None,
) -> ImageData:
    """Load one split of a data set as flattened images in [0, 1].

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` (also ``"fashion_mnist"``, ``"fashionmnist"``),
            ``"digits"``, ``"svhn"`` or ``"celeba"``, case-insensitive.
        split: ``"train"`` or ``"test"`` (CelebA also ``"validation"``); default ``"train"``.
            MNIST and Fashion-MNIST have 60000/10000 images; digits 1437/360 (see
            [`pyrovae.data.digits`][]); SVHN 73257/26032; CelebA 162770/19867/19962.
        root: data root, see [`data_root`][]; default ``None``. Ignored for digits.
        download: fetch missing files, see [`ensure_files`][]; default ``True``.
        device: device of the returned tensors; default ``None`` means CPU.
        dtype: floating dtype of ``x``; default ``torch.float32``.
        image_size: CelebA only: 64 (default) or 32 pixels a side.
        limit: keep the first ``limit`` images (CelebA decodes only those); default all.

    Returns:
        [`ImageData`][] with ``x`` of shape ``[N, 784]`` (or ``[N, 64]`` for digits). Decoded
        arrays are cached in-process, so repeated loads only pay for the tensor copy.

    Raises:
        ValueError: unknown name, split or non-floating ``dtype``; a CUDA ``device`` on a
            machine (or torch build) without one.
        DatasetNotFoundError: MNIST-type files are missing and cannot be downloaded.
    """
    name = canonical_name(name)
    device = _check_device(device)
    splits = ("train", "validation", "test") if name == "celeba" else ("train", "test")
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(splits)}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    attribute_names, num_classes = None, 10
    if name == "digits":
        images, labels = load_digits_arrays(split)
        max_value = float(DIGITS_MAX_VALUE)
    elif name == "svhn":
        images, labels = load_svhn_arrays(split, root=root, download=download)
        max_value = 255.0
    elif name == "celeba":
        images, labels, names = load_celeba_arrays(split, root, image_size, limit)
        attribute_names, num_classes, max_value = tuple(names), 2, 255.0
    else:
        images, labels = load_mnist_arrays(name, split, root=root, download=download)
        max_value = 255.0
    images, labels = images[:limit], labels[:limit]
    x = torch.tensor(images.reshape(len(images), -1), dtype=dtype, device=device)
    return ImageData(
        x=x.div_(max_value),
        y=torch.tensor(labels, dtype=torch.long, device=device),
        image_shape=tuple(images.shape[1:]),
        num_classes=num_classes,
        name=name,
        attribute_names=attribute_names,
    )


def _check_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a ``torch.device`` (default CPU); a GPU that is not there is a clear error
    before any file is read, not an assertion from deep inside torch."""
    try:
        device = torch.device("cpu") if device is None else torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} asks for a GPU, but this torch ({torch.__version__}) sees "
            "no CUDA device; use device='cpu' (or device='cuda' if torch.cuda.is_available() "
            "else 'cpu')"
        )
    return device
