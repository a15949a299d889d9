"""IDX reader on tiny files written by the tests themselves."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from pyrovae.data import IDXError, read_idx

TYPE_CODES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
SHAPES = [(7,), (3, 5), (2, 3, 4), (2, 1, 3, 2)]


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """Serialise ``array`` as an IDX file with element type ``code``."""
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(TYPE_CODES[code]).tobytes()


def sample_array(code: int, shape: tuple[int, ...]) -> np.ndarray:
    """Values that exercise sign, byte order and the extremes of the type."""
    dtype = TYPE_CODES[code]
    rng = np.random.default_rng(code)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=shape, endpoint=True)
        values.flat[0], values.flat[-1] = info.min, info.max
    else:
        values = rng.normal(scale=1e3, size=shape)
        values.flat[0] = -np.finfo(dtype).max
    return values.astype(dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: f"{len(shape)}d")
@pytest.mark.parametrize("code", TYPE_CODES, ids=lambda code: f"0x{code:02X}")
@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "gzip"])
def test_round_trip(tmp_path: Path, code: int, shape: tuple[int, ...], compressed: bool) -> None:
    expected = sample_array(code, shape)
    content = idx_bytes(expected, code)
    path = tmp_path / "array.idx"
    path.write_bytes(gzip.compress(content) if compressed else content)

    array = read_idx(path)

    assert array.shape == shape
    assert array.dtype == TYPE_CODES[code].newbyteorder("=")
    assert array.dtype.isnative and array.flags.writeable
    np.testing.assert_array_equal(array, expected)


def test_compression_is_detected_from_content_not_name(tmp_path: Path) -> None:
    expected = np.arange(12, dtype=np.uint8).reshape(3, 4)
    content = idx_bytes(expected, 0x08)
    misnamed_gzip, misnamed_raw = tmp_path / "images.idx", tmp_path / "images.gz"
    misnamed_gzip.write_bytes(gzip.compress(content))
    misnamed_raw.write_bytes(content)

    np.testing.assert_array_equal(read_idx(misnamed_gzip), expected)
    np.testing.assert_array_equal(read_idx(str(misnamed_raw)), expected)


VALID = idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3), 0x08)
VALID_GZIP = gzip.compress(VALID)
BAD_FILES = {
    "bad magic": (b"\x01" + VALID[1:], "bad magic"),
    "unknown type": (VALID[:2] + b"\x0a" + VALID[3:], "type code 0x0A"),
    "zero dims": (b"\x00\x00\x08\x00", "number of dimensions 0"),
    "five dims": (b"\x00\x00\x08\x05" + struct.pack(">5I", *[1] * 5) + b"\x00", "dimensions 5"),
    "empty file": (b"", "truncated header"),
    "short magic": (b"\x00\x00\x08", "truncated header"),
    "short dims": (VALID[:9], "truncated header"),
    "truncated payload": (VALID[:-1], "truncated payload"),
    "trailing bytes": (VALID + b"\x00", "trailing bytes"),
    "truncated payload in gzip": (gzip.compress(VALID[:-2]), "truncated payload"),
    "truncated gzip": (VALID_GZIP[:-10], "corrupt gzip"),
    "bad gzip crc": (VALID_GZIP[:-8] + bytes(8), "corrupt gzip"),
    "gzip garbage": (b"\x1f\x8b" + b"not deflate data at all", "corrupt gzip"),
}


@pytest.mark.parametrize(("content", "problem"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_malformed_file_raises_idx_error_naming_file(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "broken-file-idx1-ubyte"
    path.write_bytes(content)

    with pytest.raises(IDXError, match=problem) as info:
        read_idx(path)

    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent")
