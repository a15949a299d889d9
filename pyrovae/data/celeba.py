"""CelebA (Liu et al. 2015), the aligned faces: files, decoding, cropping and resizing.

Layout (torchvision's)::

    ROOT/celeba/img_align_celeba/000001.jpg ... 202599.jpg   (178 x 218 colour JPEGs)
    ROOT/celeba/list_attr_celeba.txt                         (40 binary attributes per image)
    ROOT/celeba/list_eval_partition.txt                      (0 train, 1 validation, 2 test)

The files are on Google Drive only, which serves them through an interactive confirmation page,
so they cannot be downloaded automatically:
[`celeba_folder`][pyrovae.data.celeba.celeba_folder] says where to get them (the official page
and the md5 of every file). Images are read with Pillow, centre-cropped to a
square of ``CROP`` pixels and resized to ``image_size`` (64 or 32).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from pyrovae.data.mnist import DatasetNotFoundError, data_root

logger = logging.getLogger(__name__)

FOLDER = "celeba"
IMAGES = "img_align_celeba"
ATTRIBUTES = "list_attr_celeba.txt"
PARTITION = "list_eval_partition.txt"
PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
#: file -> (Google Drive id, md5), as the official Drive folder serves them.
FILES = {
    "img_align_celeba.zip": ("0B7EVK8r0v71pZjFTYXZWM3FlRnM", "00d2c5bc6d35e252742224ab0c1e8fcb"),
    ATTRIBUTES: ("0B7EVK8r0v71pblRyaVFSWGxPY0U", "75e246fa4810816ffd6ee81facbd244c"),
    PARTITION: ("0B7EVK8r0v71pY0NSMzRuSXJEVkk", "d32c9cbf5e040fd4025c592c306e6668"),
}
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
CROP = 148  # the centre square of the 178 x 218 aligned faces kept before resizing
IMAGE_SIZES = (32, 64)


def celeba_folder(root: str | os.PathLike | None = None) -> Path:
    """``ROOT/celeba`` once it holds the images, attributes and partition; else a clear error.

    Raises:
        DatasetNotFoundError: something is missing; the message lists it and where to get it.
    """
    folder = data_root(root) / FOLDER
    needed = [IMAGES + "/", ATTRIBUTES, PARTITION]
    missing = [n for n in needed if not (folder / n.rstrip("/")).exists()]
    if missing:
        sources = "; ".join(f"{name} (Drive id {i}, md5 {m})" for name, (i, m) in FILES.items())
        raise DatasetNotFoundError(
            f"CelebA files missing from {folder}: {', '.join(missing)}. CelebA is on Google "
            f"Drive only and cannot be downloaded automatically: get {sources} from {PAGE}, "
            f"unzip img_align_celeba.zip into {folder}, and check the md5s"
        )
    return folder


def read_attributes(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """``(file names, attribute names, values uint8 [N, 40] in {0, 1})`` of list_attr_celeba.txt."""
    lines = Path(path).read_text().splitlines()
    count, names = int(lines[0]), lines[1].split()
    rows = [line.split() for line in lines[2: 2 + count]]
    if len(rows) != count or any(len(r) != len(names) + 1 for r in rows):
        raise ValueError(f"{path}: expected {count} rows of a file name and {len(names)} values")
    values = np.array([[v == "1" for v in r[1:]] for r in rows], dtype=np.uint8)
    return [r[0] for r in rows], names, values


def read_partition(path: str | os.PathLike) -> dict[str, int]:
    """file name -> 0 (train), 1 (validation) or 2 (test), from list_eval_partition.txt."""
    return {name: int(code) for name, code in
            (line.split() for line in Path(path).read_text().splitlines() if line.strip())}


def load_image(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """One face: centre-cropped to ``CROP`` x ``CROP``, resized to ``image_size``, as uint8
    ``[3, image_size, image_size]``."""
    from PIL import Image  # Pillow comes with matplotlib

    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        side = min(CROP, width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR,
                             reducing_gap=2.0)
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def load_celeba_arrays(
    split: str = "train", root: str | os.PathLike | None = None, image_size: int = 64,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images uint8 [N, 3, S, S], attributes uint8 [N, 40], attribute names)`` of ``split``
    (``"train"``, ``"validation"`` or ``"test"``), the first ``limit`` images only if given.

    Decoding all 162770 training images takes minutes; nothing is cached on disk.
    """
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {image_size}")
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown CelebA split {split!r}; valid: {', '.join(SPLIT_CODES)}")
    folder = celeba_folder(root)
    files, names, values = read_attributes(folder / ATTRIBUTES)
    partition = read_partition(folder / PARTITION)
    keep = [i for i, f in enumerate(files) if partition.get(f) == SPLIT_CODES[split]][:limit]
    logger.info("decoding %d CelebA %s images from %s", len(keep), split, folder / IMAGES)
    images = np.stack([load_image(folder / IMAGES / files[i], image_size) for i in keep]) \
        if keep else np.zeros((0, 3, image_size, image_size), dtype=np.uint8)
    return images, values[keep], names
