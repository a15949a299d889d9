"""SVHN and CelebA loaders, on small synthetic files in the official formats written here
(the real files cannot be fetched on the test machines)."""

import hashlib
import sys

import numpy as np
import pytest
import torch

import pyrovae.data.download as download
import pyrovae.data.svhn as svhn
from pyrovae.data import ChecksumError, DatasetNotFoundError, load_dataset
from pyrovae.data.celeba import ATTRIBUTES, CROP, IMAGES, PARTITION

scipy_io = pytest.importorskip("scipy.io")


def write_svhn(path, n=6, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    labels = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # 1..10, 10 is digit 0
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy_io.savemat(path, {"X": images, "y": labels})
    return images, labels


def test_svhn_decodes_channels_first_and_maps_label_10_to_0(tmp_path):
    images, labels = write_svhn(tmp_path / "SVHN" / "train_32x32.mat", n=12)
    data = load_dataset("svhn", "train", root=tmp_path, download=False)
    assert data.image_shape == (3, 32, 32) and data.x.shape == (12, 3 * 32 * 32)
    assert data.y.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    # pixel (row r, column c, channel k) of image n lies at x[n, k*1024 + r*32 + c]
    n, r, c, k = 7, 3, 30, 2
    assert data.x[n, k * 1024 + r * 32 + c].item() == pytest.approx(images[r, c, k, n] / 255)
    assert float(data.x.min()) >= 0 and float(data.x.max()) <= 1


def test_svhn_missing_offline_names_the_file_and_url(tmp_path):
    with pytest.raises(DatasetNotFoundError) as raised:
        load_dataset("svhn", "test", root=tmp_path, download=False)
    message = str(raised.value)
    assert str(tmp_path / "SVHN" / "test_32x32.mat") in message
    assert "http://ufldl.stanford.edu/housenumbers/test_32x32.mat" in message


def test_svhn_download_is_md5_checked(tmp_path, monkeypatch):
    source = tmp_path / "source.mat"
    write_svhn(source)
    payload = source.read_bytes()
    monkeypatch.setattr(download, "_fetch", lambda url, timeout: payload)
    with pytest.raises(ChecksumError, match="expected e26dedcc434d2e4c54c9b2d4a06d8373"):
        svhn.svhn_file("train", root=tmp_path / "a")
    assert not (tmp_path / "a" / "SVHN" / "train_32x32.mat").exists()  # nothing written
    good = hashlib.md5(payload).hexdigest()
    monkeypatch.setitem(svhn.FILES, "train", ("train_32x32.mat", good))
    path = svhn.svhn_file("train", root=tmp_path / "b")
    assert path.read_bytes() == payload


def test_svhn_download_waits_longer_and_a_stored_file_is_trusted(tmp_path, monkeypatch):
    timeouts = []
    payload = b"stands in for an SVHN file"
    monkeypatch.setattr(download, "_fetch", lambda _, timeout: timeouts.append(timeout) or payload)
    monkeypatch.setitem(svhn.FILES, "test", ("test_32x32.mat", hashlib.md5(payload).hexdigest()))
    path = svhn.svhn_file("test", root=tmp_path)
    assert timeouts == [download.DOWNLOAD_TIMEOUT_S * 20]  # the long timeout of the big files
    path.write_bytes(b"changed")  # verify_stored=False: not hashed again on each load
    assert svhn.svhn_file("test", root=tmp_path, download=False) == path
    assert timeouts == [download.DOWNLOAD_TIMEOUT_S * 20]


def test_svhn_without_scipy_says_what_to_install(tmp_path, monkeypatch):
    write_svhn(tmp_path / "SVHN" / "test_32x32.mat")
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    svhn._decoded.cache_clear()
    with pytest.raises(ImportError, match=r"pip install 'pyrovae\[svhn\]'"):
        load_dataset("svhn", "test", root=tmp_path, download=False)


def write_celeba(root, partitions=(0, 0, 2, 1, 0)):
    """Faces of 178 x 218 pixels: a blue centre square of CROP pixels on a red background."""
    from PIL import Image

    folder = root / "celeba"
    (folder / IMAGES).mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(partitions))]
    for i, name in enumerate(names):
        pixels = np.zeros((218, 178, 3), dtype=np.uint8)
        pixels[..., 0] = 255
        top, left = (218 - CROP) // 2, (178 - CROP) // 2
        pixels[top: top + CROP, left: left + CROP] = (0, 10 * i, 255)
        Image.fromarray(pixels).save(folder / IMAGES / name, quality=95, subsampling=0)
    attributes = ["Smiling", "Young"]
    rows = [f"{n} {'1' if i % 2 else '-1'} {'1' if i < 2 else '-1'}" for i, n in enumerate(names)]
    (folder / ATTRIBUTES).write_text("\n".join([str(len(names)), " ".join(attributes), *rows]))
    (folder / PARTITION).write_text("\n".join(f"{n} {p}" for n, p in zip(names, partitions,
                                                                            strict=True)))
    return names


@pytest.mark.parametrize("size", [32, 64])
def test_celeba_crops_the_centre_resizes_and_reads_attributes(tmp_path, size):
    write_celeba(tmp_path)
    data = load_dataset("celeba", "train", root=tmp_path, image_size=size)
    assert data.image_shape == (3, size, size) and len(data) == 3  # images 1, 2 and 5
    images = data.x.reshape(3, 3, size, size)
    # the red border is cropped away (JPEG leaves a little ringing at the square's edge)
    assert float(images[:, 0].max()) < 0.25 and float(images[:, 2].min()) > 0.75
    assert data.attribute_names == ("Smiling", "Young")
    assert data.y.tolist() == [[0, 1], [1, 1], [0, 0]]
    test = load_dataset("celeba", "test", root=tmp_path, image_size=size, limit=1)
    assert len(test) == 1 and test.y.tolist() == [[0, 0]]
    assert len(load_dataset("celeba", "validation", root=tmp_path, image_size=32)) == 1


def test_celeba_missing_says_it_cannot_be_downloaded_and_where_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as raised:
        load_dataset("celeba", root=tmp_path)
    message = str(raised.value)
    assert "cannot be downloaded automatically" in message
    assert "00d2c5bc6d35e252742224ab0c1e8fcb" in message and "CelebA.html" in message
    assert str(tmp_path / "celeba") in message


def test_celeba_bad_size_and_split(tmp_path):
    write_celeba(tmp_path)
    with pytest.raises(ValueError, match="image_size must be one of"):
        load_dataset("celeba", root=tmp_path, image_size=48)
    with pytest.raises(ValueError, match="valid splits: train, test"):
        load_dataset("svhn", "validation", root=tmp_path)
    assert torch.is_tensor(load_dataset("celeba", root=tmp_path, image_size=32, limit=2).x)


def test_celeba_cache_is_written_once_reused_and_rebuilt_when_stale(tmp_path, monkeypatch):
    import pyrovae.data.celeba as celeba

    names = write_celeba(tmp_path, partitions=(0, 0, 0))
    first = load_dataset("celeba", "train", root=tmp_path, image_size=32)
    path = celeba.cache_path(tmp_path / "celeba", "train", 32, 3)
    assert path.is_file()

    decoded = []
    real_load_image = celeba.load_image
    monkeypatch.setattr(celeba, "load_image",
                        lambda *args: decoded.append(args) or real_load_image(*args))
    again = load_dataset("celeba", "train", root=tmp_path, image_size=32)
    assert decoded == [] and torch.equal(again.x, first.x)  # no JPEG opened
    assert torch.equal(again.y, first.y)

    # Another size or number of images is another cache; the first one stays.
    assert len(load_dataset("celeba", "train", root=tmp_path, image_size=32, limit=2)) == 2
    assert len(decoded) == 2 and path.is_file()

    # A changed image (another file size) makes the cache stale: decoded again, rewritten.
    from PIL import Image

    image = tmp_path / "celeba" / IMAGES / names[1]
    Image.new("RGB", (178, 218), (0, 255, 0)).save(image, quality=50)
    decoded.clear()
    changed = load_dataset("celeba", "train", root=tmp_path, image_size=32)
    assert len(decoded) == 3
    green = changed.x.reshape(3, 3, 32, 32)[1].mean((1, 2))
    assert float(green[1]) > 0.9 and float(green[0]) < 0.1  # the new picture, not the cached
    decoded.clear()
    assert torch.equal(load_dataset("celeba", "train", root=tmp_path, image_size=32).x,
                       changed.x) and decoded == []

    # A damaged cache (one flipped byte in the images) fails its sha256 and is rebuilt.
    raw = bytearray(path.read_bytes())
    with np.load(path) as stored:
        offset = raw.find(stored["images"].tobytes()[:64])
    raw[offset + 5] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert torch.equal(load_dataset("celeba", "train", root=tmp_path, image_size=32).x,
                       changed.x) and len(decoded) == 3
    decoded.clear()
    load_dataset("celeba", "train", root=tmp_path, image_size=32)
    assert decoded == []  # the rebuilt cache is good again


def test_celeba_cache_in_a_read_only_folder_only_warns(tmp_path, monkeypatch, caplog):
    import pyrovae.data.celeba as celeba

    write_celeba(tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(celeba.np, "savez", refuse)
    data = load_dataset("celeba", "train", root=tmp_path, image_size=32)
    assert len(data) == 3 and "not written" in caplog.text
    assert not list((tmp_path / "celeba").glob("cache/*"))  # no temporary file left behind
