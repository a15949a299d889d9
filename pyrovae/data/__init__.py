"""Data sets and transforms.

``load_dataset(name, split)`` returns an :class:`ImageData` with flattened images scaled to
[0, 1]; the transforms binarise them and split labels for semi-supervised training::

    from pyrovae.data import DynamicBinarized, labelled_split, load_dataset

    train = load_dataset("mnist", "train")            # x: [60000, 784], y: [60000]
    stream = DynamicBinarized(train.x, seed=0)        # stream.for_epoch(epoch) -> (x_bin,)
    split = labelled_split(train.y, n_labelled=100, n_validation=10000, seed=0)

Files live under :func:`data_root` (``$PYROVAE_DATA`` or ``~/.cache/pyrovae``) in torchvision's
layout; see :mod:`pyrovae.data.mnist`. The ``"digits"`` set ships with scikit-learn.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

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
from pyrovae.data.streams import LabelledStream, M1Codes, encode_in_chunks
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
    "SplitIndices",
    "binarize",
    "data_root",
    "encode_in_chunks",
    "ensure_files",
    "labelled_split",
    "load_dataset",
    "read_idx",
    "threshold",
]


@dataclass(frozen=True, eq=False)
class ImageData:
    """One split of an image data set.

    Attributes:
        x: images flattened to ``[N, D]`` with ``D = H * W``, floating, values in [0, 1].
        y: labels ``[N]``, ``torch.long``, in ``0..num_classes-1``, on ``x``'s device.
        image_shape: ``(H, W)``: ``(28, 28)`` for MNIST/Fashion-MNIST, ``(8, 8)`` for digits.
        num_classes: number of classes (10 for all built-in sets).
        name: canonical data set name, e.g. ``"fashion-mnist"``.
    """

    x: Tensor
    y: Tensor
    image_shape: tuple[int, int]
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if self.x.dim() != 2 or self.x.shape[1] != math.prod(self.image_shape):
            raise ValueError(
                f"x must have shape [N, {math.prod(self.image_shape)}] for images of shape "
                f"{self.image_shape}, got {tuple(self.x.shape)}"
            )
        if self.y.shape != self.x.shape[:1]:
            raise ValueError(f"y must have shape [{self.x.shape[0]}], got {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return self.x.shape[0]


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> ImageData:
    """Load one split of a data set as flattened images in [0, 1].

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` (also ``"fashion_mnist"``, ``"fashionmnist"``) or
            ``"digits"``, case-insensitive.
        split: ``"train"`` or ``"test"``; default ``"train"``. MNIST and Fashion-MNIST have
            60000/10000 images; digits 1437/360 (see :mod:`pyrovae.data.digits`).
        root: data root, see :func:`data_root`; default ``None``. Ignored for digits.
        download: fetch missing files, see :func:`ensure_files`; default ``True``.
        device: device of the returned tensors; default ``None`` means CPU.
        dtype: floating dtype of ``x``; default ``torch.float32``.

    Returns:
        :class:`ImageData` with ``x`` of shape ``[N, 784]`` (or ``[N, 64]`` for digits). Decoded
        arrays are cached in-process, so repeated loads only pay for the tensor copy.

    Raises:
        ValueError: unknown name, split or non-floating ``dtype``; a CUDA ``device`` on a
            machine (or torch build) without one.
        DatasetNotFoundError: MNIST-type files are missing and cannot be downloaded.
    """
    name = canonical_name(name)
    device = _check_device(device)
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; valid splits: train, test")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if name == "digits":
        images, labels = load_digits_arrays(split)
        max_value = float(DIGITS_MAX_VALUE)
    else:
        images, labels = load_mnist_arrays(name, split, root=root, download=download)
        max_value = 255.0
    x = torch.tensor(images.reshape(len(images), -1), dtype=dtype, device=device)
    return ImageData(
        x=x.div_(max_value),
        y=torch.tensor(labels, dtype=torch.long, device=device),
        image_shape=images.shape[1:],
        num_classes=10,
        name=name,
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
