"""scikit-learn's bundled 8x8 handwritten digits (1797 images, no download), with a fixed split.

The split is stratified and seeded: ``"test"`` holds 360 images (20%), ``"train"`` the other
``NUM_TRAIN = 1437``. Each class gives ``360 * n_class / 1797`` test images, rounded so that the
total is 360 (largest remainders first); which images of a class go to test is decided by a random
permutation from ``numpy.random.default_rng(SPLIT_SEED)`` (seed 0). Both splits keep the original
order of the images, and are the same on every call and machine.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["IMAGE_SHAPE", "MAX_VALUE", "NUM_TRAIN", "SPLIT_SEED", "load_digits_arrays"]

IMAGE_SHAPE = (8, 8)
#: Pixel values are integers 0..MAX_VALUE (scale by 1 / MAX_VALUE to get [0, 1]).
MAX_VALUE = 16
NUM_TRAIN = 1437
SPLIT_SEED = 0
NUM_CLASSES = 10


def _test_mask(target: np.ndarray) -> np.ndarray:
    """Boolean ``[N]`` mask of the stratified test split for labels ``target`` ``[N]``."""
    counts = np.bincount(target, minlength=NUM_CLASSES)
    num_test = len(target) - NUM_TRAIN
    share = num_test * counts / len(target)
    quota = np.floor(share).astype(np.int64)
    largest_remainders = np.argsort(-(share - quota), kind="stable")
    quota[largest_remainders[: num_test - quota.sum()]] += 1
    # Visit the images in random order; the first `quota[c]` visited of class c go to test.
    order = np.random.default_rng(SPLIT_SEED).permutation(len(target))
    by_class = order[np.argsort(target[order], kind="stable")]
    rank = np.arange(len(target)) - (np.cumsum(counts) - counts)[target[by_class]]
    mask = np.zeros(len(target), dtype=bool)
    mask[by_class[rank < quota[target[by_class]]]] = True
    return mask


@functools.lru_cache(maxsize=2)
def load_digits_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split of scikit-learn's digits, cached in-process.

    Args:
        split: ``"train"`` (1437 images) or ``"test"`` (360 images); default ``"train"``.

    Returns:
        ``(images, labels)``: read-only ``uint8`` arrays of shapes ``[N, 8, 8]`` (values 0..16) and
        ``[N]`` (0..9).
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; valid splits: train, test")
    from sklearn.datasets import load_digits  # slow import, only when used

    bunch = load_digits()
    chosen = np.flatnonzero(_test_mask(bunch.target) == (split == "test"))
    images = bunch.images[chosen].astype(np.uint8)
    labels = bunch.target[chosen].astype(np.uint8)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels
