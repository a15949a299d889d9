"""Data location, downloads (monkeypatched, no network), loading; real files if present.

Real-data tests read ``$PYROVAE_DATA/{MNIST,FashionMNIST}/raw`` and skip when those are absent.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import pyrovae.data.mnist as mnist_files
from pyrovae.data import (
    ChecksumError,
    DatasetNotFoundError,
    ImageData,
    data_root,
    ensure_files,
    load_dataset,
)
from pyrovae.data.digits import load_digits_arrays

FILE_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def real_root(folder: str) -> Path:
    """``$PYROVAE_DATA`` if it holds the four files of ``folder``, else skip the test."""
    root = os.environ.get("PYROVAE_DATA")
    if not root or not all((Path(root, folder, "raw", name)).is_file() for name in FILE_NAMES):
        pytest.skip(f"set PYROVAE_DATA to a folder with {folder}/raw/ to run real-data tests")
    return Path(root)


def patch_fetch(monkeypatch: pytest.MonkeyPatch, respond) -> list[str]:
    """Replace the network fetch by ``respond(url) -> bytes``; returns the URLs requested."""
    tried = []

    def fetch(url: str, timeout: float) -> bytes:
        tried.append(url)
        return respond(url)

    monkeypatch.setattr(mnist_files, "_fetch", fetch)
    return tried


def offline(url: str) -> bytes:
    raise urllib.error.URLError("network is unreachable")


def fake_mnist(num_images: int = 3) -> dict[str, bytes]:
    """Four gzip IDX files of a tiny MNIST: image ``i`` is filled with ``i * 100``, label ``i``."""
    images = np.repeat(np.arange(num_images, dtype=np.uint8) * 100, 28 * 28)
    header = struct.pack(">HBBIII", 0, 0x08, 3, num_images, 28, 28)
    images_file = gzip.compress(header + images.tobytes(), mtime=0)
    labels = np.arange(num_images, dtype=np.uint8)
    labels_file = gzip.compress(struct.pack(">HBBI", 0, 0x08, 1, num_images) + labels.tobytes())
    return dict(zip(FILE_NAMES, [images_file, labels_file] * 2, strict=True))


def serve(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> list[str]:
    """Serve ``files`` from every MNIST mirror and make their md5 sums the expected ones."""
    for file_name, content in files.items():
        monkeypatch.setitem(
            mnist_files.MD5SUMS["mnist"], file_name, hashlib.md5(content).hexdigest()
        )
    return patch_fetch(monkeypatch, lambda url: files[url.rsplit("/", 1)[1]])


@pytest.mark.parametrize(
    ("argument", "environment", "expected"),
    [
        ("/explicit", "/from-env", "/explicit"),
        (None, "/from-env", "/from-env"),
        (None, "", "HOME/.cache/pyrovae"),
        (None, None, "HOME/.cache/pyrovae"),
        ("~/data", None, "HOME/data"),
    ],
)
def test_data_root_precedence(monkeypatch, tmp_path, argument, environment, expected) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    if environment is None:
        monkeypatch.delenv("PYROVAE_DATA", raising=False)
    else:
        monkeypatch.setenv("PYROVAE_DATA", environment)
    assert data_root(argument) == Path(expected.replace("HOME", str(tmp_path)))


@pytest.mark.parametrize(
    ("name", "split", "dtype", "message"),
    [
        ("cifar10", "train", torch.float32, "mnist, fashion-mnist, digits"),
        ("mnist", "valid", torch.float32, "valid splits: train, test"),
        ("digits", "train", torch.int64, "floating"),
    ],
)
def test_load_dataset_rejects_bad_arguments(tmp_path, name, split, dtype, message) -> None:
    with pytest.raises(ValueError, match=message):
        load_dataset(name, split, root=tmp_path, download=False, dtype=dtype)


def test_digits_has_no_files() -> None:
    pytest.raises(ValueError, ensure_files, "digits").match("not stored as files")


@pytest.mark.parametrize("present", [(), FILE_NAMES[:3]], ids=["none present", "one missing"])
def test_missing_files_without_download(monkeypatch, tmp_path, present) -> None:
    tried = patch_fetch(monkeypatch, offline)
    folder = tmp_path / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    for file_name in present:
        (folder / file_name).write_bytes(b"trusted without checking")

    with pytest.raises(DatasetNotFoundError) as info:
        ensure_files("fashion_mnist", root=tmp_path, download=False)

    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError) and not tried
    assert str(folder) in message and "PYROVAE_DATA" in message and "torchvision" in message
    assert all(file_name in message for file_name in FILE_NAMES)
    missing = ", ".join(name for name in FILE_NAMES if name not in present)
    assert f"missing from {folder}: {missing} (download=False)" in message


@pytest.mark.parametrize(
    "error",
    [urllib.error.URLError("unreachable"), TimeoutError("timed out"), ConnectionResetError()],
    ids=["URLError", "timeout", "reset"],
)
def test_offline_download_raises_one_clear_error(monkeypatch, tmp_path, error) -> None:
    def fail(url: str) -> bytes:
        raise error

    patch_fetch(monkeypatch, fail)
    folder = tmp_path / "MNIST" / "raw"

    with pytest.raises(DatasetNotFoundError, match="download failed") as info:
        load_dataset("mnist", root=tmp_path)

    assert str(folder) in str(info.value)
    assert all(file_name in str(info.value) for file_name in FILE_NAMES)
    assert not folder.exists() or not any(folder.iterdir())


def test_wrong_md5_is_rejected_and_nothing_is_kept(monkeypatch, tmp_path) -> None:
    tried = patch_fetch(monkeypatch, lambda url: b"<html>not the file</html>")

    with pytest.raises(ChecksumError, match="md5"):
        ensure_files("mnist", root=tmp_path)

    assert tried == [mirror + FILE_NAMES[0] for mirror in mnist_files.MIRRORS["mnist"]]
    folder = tmp_path / "MNIST" / "raw"
    assert not folder.exists() or not any(folder.iterdir())


def test_download_writes_atomically_and_loads(monkeypatch, tmp_path) -> None:
    files = fake_mnist()
    tried = serve(monkeypatch, files)
    folder = tmp_path / "MNIST" / "raw"
    renames = []
    real_replace = os.replace

    def recording_replace(source, destination) -> None:
        renames.append((Path(source), Path(destination)))
        assert Path(source).parent == folder and Path(source).stat().st_size > 0
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", recording_replace)

    assert ensure_files("mnist", root=tmp_path) == folder

    assert [destination for _, destination in renames] == [folder / name for name in FILE_NAMES]
    assert all(source.name.startswith(".") and source.name != dest.name for source, dest in renames)
    assert sorted(path.name for path in folder.iterdir()) == sorted(FILE_NAMES)  # no temp files
    assert all((folder / name).read_bytes() == content for name, content in files.items())
    assert tried == [mnist_files.MIRRORS["mnist"][0] + name for name in FILE_NAMES]

    data = load_dataset("mnist", "test", root=tmp_path)  # files now present: no new fetch
    assert len(tried) == 4 and len(data) == 3 and data.image_shape == (28, 28)
    assert torch.equal(data.y, torch.arange(3))
    assert torch.equal(data.x, (torch.arange(3.0) * 100 / 255)[:, None].expand(3, 784))


@pytest.mark.parametrize("first_mirror", ["offline", "wrong md5"])
def test_download_falls_back_to_the_next_mirror(monkeypatch, tmp_path, first_mirror) -> None:
    files = fake_mnist()
    serve(monkeypatch, files)  # sets the md5 sums
    first_url = mnist_files.MIRRORS["mnist"][0]

    def flaky(url: str) -> bytes:
        if url.startswith(first_url):
            return offline(url) if first_mirror == "offline" else b"wrong"
        return files[url.rsplit("/", 1)[1]]

    patch_fetch(monkeypatch, flaky)

    folder = ensure_files("mnist", root=tmp_path)
    assert all((folder / name).read_bytes() == content for name, content in files.items())


def test_failed_write_leaves_no_temp_file(monkeypatch, tmp_path) -> None:
    serve(monkeypatch, fake_mnist())

    def full_disk(source, destination) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)

    with pytest.raises(DatasetNotFoundError, match="No space left"):
        ensure_files("mnist", root=tmp_path)
    assert not any((tmp_path / "MNIST" / "raw").iterdir())


def test_verify_checks_stored_files(monkeypatch, tmp_path) -> None:
    files = fake_mnist()
    serve(monkeypatch, files)
    folder = ensure_files("mnist", root=tmp_path)
    assert ensure_files("mnist", root=tmp_path, verify=True) == folder
    (folder / FILE_NAMES[1]).write_bytes(b"tampered")

    assert ensure_files("mnist", root=tmp_path) == folder  # present files are trusted by default
    with pytest.raises(ChecksumError, match=FILE_NAMES[1]):
        ensure_files("mnist", root=tmp_path, verify=True)


@pytest.mark.parametrize(
    ("name", "split", "first_labels", "class_counts", "mean"),
    [
        ("mnist", "train", [5, 0, 4, 1, 9],
         [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949], 0.1307),
        ("mnist", "test", [7, 2, 1, 0, 4], [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
         0.1325),
        ("fashion-mnist", "train", [9, 0, 0, 3, 0], [6000] * 10, 0.2860),
        ("FashionMNIST", "test", [9, 2, 1, 1, 6], [1000] * 10, 0.2868),
    ],
)  # fmt: skip
def test_real_data(name, split, first_labels, class_counts, mean) -> None:
    root = real_root("MNIST" if name == "mnist" else "FashionMNIST")

    data = load_dataset(name, split, root=root, download=False)

    assert len(data) == sum(class_counts) and data.x.shape == (len(data), 784)
    assert data.image_shape == (28, 28) and data.num_classes == 10
    assert data.x.dtype == torch.float32 and data.y.dtype == torch.long
    assert data.x.min() == 0 and data.x.max() == 1
    assert data.y[:5].tolist() == first_labels
    assert torch.bincount(data.y, minlength=10).tolist() == class_counts
    assert data.x.mean().item() == pytest.approx(mean, abs=1e-4)


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]
)
def test_real_files_pass_verification(monkeypatch, name, folder) -> None:
    root = real_root(folder)
    patch_fetch(monkeypatch, offline)
    assert ensure_files(name, root=root, verify=True) == root / folder / "raw"


@pytest.mark.parametrize("split", ["train", "test"])
def test_digits(split: str) -> None:
    data = load_dataset("digits", split, dtype=torch.float64)
    other = load_dataset("digits", "test" if split == "train" else "train")

    assert len(data) == (1437 if split == "train" else 360) and len(data) + len(other) == 1797
    assert data.x.shape == (len(data), 64) and data.image_shape == (8, 8) and data.name == "digits"
    assert data.x.dtype == torch.float64 and data.x.min() == 0 and data.x.max() == 1
    assert torch.equal(data.x * 16, (data.x * 16).round())  # original values 0..16
    counts = torch.bincount(data.y, minlength=10).float()
    assert ((counts / len(data) - 0.1).abs() < 0.015).all()  # stratified


def test_digits_split_is_deterministic() -> None:
    cached = load_digits_arrays("test")
    load_digits_arrays.cache_clear()
    images, labels = load_digits_arrays("test")
    np.testing.assert_array_equal(images, cached[0])
    np.testing.assert_array_equal(labels, cached[1])
    train_rows = {row.tobytes() for row in load_digits_arrays("train")[0]}
    assert not any(row.tobytes() in train_rows for row in images)  # no image in both splits

    load_dataset("digits", "test").x.zero_()  # results must not share the cached arrays
    assert load_dataset("digits", "test").x.max() == 1


def test_image_data_is_frozen_and_validated() -> None:
    data = ImageData(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), (2, 2), 10, "toy")
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.x = torch.ones(2, 4)
    with pytest.raises(ValueError, match="shape"):
        ImageData(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), (2, 2), 10, "toy")
    with pytest.raises(ValueError, match="y must have shape"):
        ImageData(torch.zeros(2, 4), torch.zeros(3, dtype=torch.long), (2, 2), 10, "toy")
