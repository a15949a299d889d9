"""MNIST and Fashion-MNIST files on disk: where they live, downloading, checksums, decoding.

The layout is torchvision's, so an existing torchvision download can be reused as is::

    ROOT/MNIST/raw/{train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
                    t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz}
    ROOT/FashionMNIST/raw/  (the same four names)

``ROOT`` is [`data_root`][]: an explicit argument, else ``$PYROVAE_DATA``, else
``~/.cache/pyrovae``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import logging
import os
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from pyrovae.data.idx import IDXError, read_idx

__all__ = [
    "DATASET_NAMES",
    "ChecksumError",
    "DatasetNotFoundError",
    "canonical_name",
    "data_root",
    "ensure_files",
    "load_mnist_arrays",
]

logger = logging.getLogger(__name__)

#: Canonical data set names accepted by [`load_dataset`][pyrovae.data.load_dataset].
DATASET_NAMES = ("mnist", "fashion-mnist", "digits", "svhn", "celeba")
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}

SPLITS = ("train", "test")
#: split -> (images file, labels file).
FILE_NAMES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
ALL_FILE_NAMES = FILE_NAMES["train"] + FILE_NAMES["test"]
FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
#: data set -> file name -> md5 of the original gzip file.
MD5SUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
DOWNLOAD_TIMEOUT_S = 30.0
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10


class DatasetNotFoundError(FileNotFoundError):
    """Data set files are missing and could not be downloaded."""


class ChecksumError(ValueError):
    """A downloaded or (with ``verify=True``) stored file does not have the expected md5 sum."""


def canonical_name(name: str) -> str:
    """Map a data set name or alias (``"fashion_mnist"``, ``"FashionMNIST"``) to its canonical name.

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASET_NAMES:
        aliases = ", ".join(_ALIASES)
        raise ValueError(
            f"unknown data set {name!r}; valid names: {', '.join(DATASET_NAMES)} "
            f"(aliases: {aliases})"
        )
    return key


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Folder holding the data sets.

    Args:
        root: explicit folder; default ``None`` means ``$PYROVAE_DATA`` if set and non-empty, else
            ``~/.cache/pyrovae``.
    """
    if root is None:
        root = os.environ.get("PYROVAE_DATA") or Path.home() / ".cache" / "pyrovae"
    return Path(root).expanduser()


def _md5(data: bytes | Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    if isinstance(data, Path):
        with data.open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    else:
        digest.update(data)
    return digest.hexdigest()


def _fetch(url: str, timeout: float) -> bytes:
    """Return the body of ``url``; raises ``OSError``/``http.client.HTTPException`` on failure."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _write_atomically(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a temporary file next to ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def _download(name: str, file_name: str, folder: Path) -> None:
    """Fetch ``file_name`` from the first mirror that serves it with the right md5.

    Raises:
        ChecksumError: a mirror answered, but with the wrong content (nothing is written).
        OSError: no mirror could be reached.
    """
    expected = MD5SUMS[name][file_name]
    failures = []
    mismatch = None
    for mirror in MIRRORS[name]:
        url = mirror + file_name
        logger.info("downloading %s", url)
        try:
            payload = _fetch(url, DOWNLOAD_TIMEOUT_S)
        except (OSError, http.client.HTTPException) as error:
            logger.warning("could not download %s: %s", url, error)
            failures.append(f"{url}: {error}")
            continue
        actual = _md5(payload)
        if actual != expected:
            logger.warning("discarding %s: md5 %s, expected %s", url, actual, expected)
            mismatch = ChecksumError(
                f"download of {url} has md5 {actual}, expected {expected}; it was discarded"
            )
            continue
        _write_atomically(folder / file_name, payload)
        logger.info("saved %s", folder / file_name)
        return
    if mismatch is not None:
        raise mismatch
    raise OSError("; ".join(failures))


def _not_found(name: str, folder: Path, missing: list[str], reason: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{name} files missing from {folder}: {', '.join(missing)} ({reason}). "
        f"The folder must hold all four files {', '.join(ALL_FILE_NAMES)}. Copy them there "
        f"(e.g. from a torchvision download, whose ROOT/{FOLDERS[name]}/raw has the same layout), "
        f"or set PYROVAE_DATA (root= in Python, "
        f"--data-root on the command line) to a folder that contains {FOLDERS[name]}/raw."
    )


def ensure_files(
    name: str,
    root: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool = False,
) -> Path:
    """Make sure the four IDX files of ``name`` are on disk and return their folder.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"`` (aliases as in [`canonical_name`][]).
        root: data root, see [`data_root`][]; default ``None``.
        download: default ``True``: fetch missing files from the mirrors (timeout
            ``DOWNLOAD_TIMEOUT_S`` per request), check their md5 and write them atomically.
        verify: default ``False``: files already present are trusted; ``True`` checks their md5.

    Returns:
        The folder ``ROOT/MNIST/raw`` or ``ROOT/FashionMNIST/raw``.

    Raises:
        DatasetNotFoundError: files are missing and could not be downloaded (offline or
            ``download=False``); the message names the folder and the four files.
        ChecksumError: a download, or a stored file when ``verify=True``, has the wrong md5.
        ValueError: ``name`` is not an IDX data set.
    """
    name = canonical_name(name)
    if name not in FOLDERS:
        raise ValueError(f"{name!r} is not stored as files; choose one of {', '.join(FOLDERS)}")
    folder = data_root(root) / FOLDERS[name] / "raw"
    missing = [file_name for file_name in ALL_FILE_NAMES if not (folder / file_name).is_file()]
    if missing and not download:
        raise _not_found(name, folder, missing, "download=False")
    for file_name in list(missing):
        try:
            _download(name, file_name, folder)
        except OSError as error:
            raise _not_found(name, folder, missing, f"download failed: {error}") from error
        missing.remove(file_name)
    if verify:
        for file_name in ALL_FILE_NAMES:
            actual, expected = _md5(folder / file_name), MD5SUMS[name][file_name]
            if actual != expected:
                raise ChecksumError(
                    f"{folder / file_name} has md5 {actual}, expected {expected}; "
                    "delete it to download it again"
                )
    return folder


@functools.lru_cache(maxsize=8)
def _decoded(name: str, split: str, folder: str) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name = FILE_NAMES[split]
    images = read_idx(Path(folder) / images_name)
    labels = read_idx(Path(folder) / labels_name)
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise IDXError(
            f"{Path(folder) / images_name}: expected uint8 images of shape (N, 28, 28), "
            f"found {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1] or labels.max() >= NUM_CLASSES:
        raise IDXError(
            f"{Path(folder) / labels_name}: expected {images.shape[0]} uint8 labels in 0..9, "
            f"found {labels.dtype} {labels.shape}"
        )
    images.flags.writeable = False
    labels.flags.writeable = False
    logger.debug("decoded %s %s from %s: %d images", name, split, folder, len(labels))
    return images, labels


def load_mnist_arrays(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Decoded MNIST or Fashion-MNIST arrays, cached in-process per (name, split, resolved root).

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"`` (or an alias).
        split: ``"train"`` (60000 images) or ``"test"`` (10000); default ``"train"``.
        root: data root, see [`data_root`][]; default ``None``.
        download: fetch missing files, see [`ensure_files`][]; default ``True``.

    Returns:
        ``(images, labels)``: read-only ``uint8`` arrays of shapes ``[N, 28, 28]`` (0..255) and
        ``[N]`` (0..9). The cache assumes the files do not change while the process runs.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    folder = ensure_files(name, root, download=download)
    return _decoded(canonical_name(name), split, str(folder.resolve()))
