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

Decoding the 162770 training JPEGs takes minutes, so the decoded images are cached, once per
split, size and number of images, in ``ROOT/celeba/cache/`` (one ``.npz`` file: the uint8
images, the md5 of their source list and the sha256 of the images). A cache is used only if
its source list (every image's file name and size in bytes, the crop and the size) is
today's and its images have the recorded sha256; otherwise it is rebuilt. A folder that cannot
be written only costs the cache (a warning), never the load.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
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
CACHE = "cache"  # the folder of decoded images, in ROOT/celeba
CACHE_FORMAT = 1  # part of every cache key: a new layout invalidates old caches


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


def source_md5(folder: Path, files: list[str], image_size: int) -> str:
    """md5 of the source list of a cache: every image's file name and size in bytes (in
    order), the crop, the size and the cache format."""
    digest = hashlib.md5(f"celeba-cache {CACHE_FORMAT} crop {CROP} size {image_size}\n".encode())
    for name in files:
        digest.update(f"{name} {(folder / IMAGES / name).stat().st_size}\n".encode())
    return digest.hexdigest()


def cache_path(folder: Path, split: str, image_size: int, count: int) -> Path:
    """The cache file of ``count`` images of ``split`` at ``image_size`` pixels a side."""
    return folder / CACHE / f"{split}-{image_size}px-{count}.npz"


def _images_sha256(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()


def read_cache(path: Path, md5: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached images if ``path`` holds images of ``shape`` decoded from the source list
    of md5 ``md5``, intact (their sha256 as recorded); None if it is missing or stale."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            recorded_md5, recorded_sha = str(stored["source_md5"]), str(stored["images_sha256"])
            if recorded_md5 != md5:
                logger.info("CelebA cache %s is stale (its images changed): rebuilding", path)
                return None
            images = stored["images"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        logger.warning("CelebA cache %s cannot be read (%s): rebuilding", path, err)
        return None
    if images.dtype != np.uint8 or images.shape != shape or _images_sha256(images) != recorded_sha:
        logger.warning("CelebA cache %s is damaged (shape or sha256): rebuilding", path)
        return None
    return images


def write_cache(path: Path, images: np.ndarray, md5: str) -> None:
    """Store ``images`` with their source list's ``md5`` and their sha256 at ``path``
    atomically; a folder that cannot be written logs a warning."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as file:  # a file object: np.savez adds no ".npz" to the name
            np.savez(file, images=images, source_md5=np.array(md5),
                     images_sha256=np.array(_images_sha256(images)))
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        logger.warning("CelebA cache %s not written (%s): the images will be decoded again "
                       "next time", path, err)


def load_celeba_arrays(
    split: str = "train", root: str | os.PathLike | None = None, image_size: int = 64,
    limit: int | None = None, cache: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images uint8 [N, 3, S, S], attributes uint8 [N, 40], attribute names)`` of ``split``
    (``"train"``, ``"validation"`` or ``"test"``), the first ``limit`` images only if given.

    Decoding all 162770 training images takes minutes: with ``cache`` (default) the decoded
    images are kept in ``ROOT/celeba/cache/`` and read from there while their source list is
    unchanged (see the module docstring).
    """
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {image_size}")
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown CelebA split {split!r}; valid: {', '.join(SPLIT_CODES)}")
    folder = celeba_folder(root)
    files, names, values = read_attributes(folder / ATTRIBUTES)
    partition = read_partition(folder / PARTITION)
    keep = [i for i, f in enumerate(files) if partition.get(f) == SPLIT_CODES[split]][:limit]
    shape = (len(keep), 3, image_size, image_size)
    if cache and keep:
        path = cache_path(folder, split, image_size, len(keep))
        md5 = source_md5(folder, [files[i] for i in keep], image_size)
        images = read_cache(path, md5, shape)
        if images is not None:
            logger.info("read %d CelebA %s images from the cache %s", len(keep), split, path)
            return images, values[keep], names
    logger.info("decoding %d CelebA %s images from %s", len(keep), split, folder / IMAGES)
    images = np.stack([load_image(folder / IMAGES / files[i], image_size) for i in keep]) \
        if keep else np.zeros(shape, dtype=np.uint8)
    if cache and keep:
        write_cache(path, images, md5)
    return images, values[keep], names
