"""SVHN (Netzer et al. 2011), the cropped 32x32 digits: files, md5-checked download, decoding.

Layout: ``ROOT/SVHN/train_32x32.mat`` and ``ROOT/SVHN/test_32x32.mat`` (73257 and 26032 colour
images; the official files of http://ufldl.stanford.edu/housenumbers/). ``ROOT`` is
``pyrovae.data.data_root``. The MATLAB files are read with ``scipy.io.loadmat``, imported only
here: install it with ``pip install 'pyrovae[svhn]'``. Label 10 in the files means the digit 0;
it is mapped to 0.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np

from pyrovae.data.download import checked_file
from pyrovae.data.mnist import DOWNLOAD_TIMEOUT_S, data_root

logger = logging.getLogger(__name__)

FOLDER = "SVHN"
URL = "http://ufldl.stanford.edu/housenumbers/"
#: split -> (file name, md5 of the official file).
FILES = {
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
}
IMAGE_SHAPE = (3, 32, 32)


def svhn_file(split: str, root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The path of ``split``'s ``.mat`` file, downloaded (md5-checked, atomically) if missing.

    A file already stored is trusted (``checked_file(verify_stored=False)``): hashing 182 MB on
    every load is slow, and the file is parsed by ``scipy.io.loadmat``, never unpickled.

    Raises:
        DatasetNotFoundError: the file is missing and ``download=False`` or the download failed;
            the message names the folder, the file and where to get it.
        ChecksumError: the download has the wrong md5 (nothing is written).
    """
    name, md5 = FILES[split]
    folder = data_root(root) / FOLDER
    path = folder / name
    return checked_file(
        path, URL + name, md5, download=download, timeout=DOWNLOAD_TIMEOUT_S * 20,  # 182 MB
        verify_stored=False,
        missing=lambda reason: (
            f"SVHN file {path} is missing ({reason}). Download {URL}{name} (md5 {md5}) into "
            f"{folder}, or set PYROVAE_DATA (root= in Python, "
            f"--data-root on the command line) to a folder that contains {FOLDER}/"
        ),
    )


def _loadmat():
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError(
            "reading SVHN's .mat files needs scipy: pip install 'pyrovae[svhn]' (or scipy)"
        ) from None
    return loadmat


@functools.lru_cache(maxsize=4)
def _decoded(path: str) -> tuple[np.ndarray, np.ndarray]:
    mat = _loadmat()(path)
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path} is not an SVHN file: it has no 'X' and 'y' arrays")
    images, labels = mat["X"], mat["y"].reshape(-1).astype(np.int64)
    if images.dtype != np.uint8 or images.shape[:3] != (32, 32, 3):
        raise ValueError(f"{path}: expected uint8 images [32, 32, 3, N], got {images.dtype} "
                         f"{images.shape}")
    if labels.shape != images.shape[3:] or labels.min() < 1 or labels.max() > 10:
        raise ValueError(f"{path}: expected {images.shape[3]} labels in 1..10")
    images = np.ascontiguousarray(images.transpose(3, 2, 0, 1))  # [N, 3, 32, 32]
    labels = np.where(labels == 10, 0, labels)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def load_svhn_arrays(
    split: str = "train", root: str | os.PathLike | None = None, download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 3, 32, 32], labels int64 [N] in 0..9)``, cached in-process."""
    return _decoded(str(svhn_file(split, root, download).resolve()))
