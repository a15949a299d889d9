"""Reader for the IDX format used by MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number ``00 00 TT NN`` (``TT`` the element type, ``NN`` the number of
dimensions), ``NN`` big-endian ``uint32`` dimension sizes, then the elements in C order, big-endian
for multi-byte types. The files are usually distributed gzip-compressed.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDX_DTYPES", "IDXError", "read_idx"]

#: IDX type code -> big-endian numpy dtype of one element.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_MAX_DIMS = 4


class IDXError(ValueError):
    """An IDX file is malformed: bad magic, truncated header, wrong payload size, corrupt gzip."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file into a numpy array.

    Args:
        path: file to read. Compression is detected from the content (gzip magic bytes ``1f 8b``),
            not from the file name, so raw and ``.gz`` files are both accepted under any name.

    Returns:
        A writeable array of shape ``dims`` (1 to 4 dimensions, as stored in the header) in native
        byte order with the file's element type (``uint8`` for MNIST images and labels).

    Raises:
        IDXError: the content is not a well-formed IDX file; the message names the path and the
            problem.
        OSError: the file cannot be opened or read.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise IDXError(f"{path}: corrupt gzip stream ({error})") from error

    if len(data) < 4:
        raise IDXError(f"{path}: truncated header ({len(data)} bytes, need a 4-byte magic number)")
    zero, type_code, num_dims = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise IDXError(f"{path}: bad magic number {data[:4].hex()} (must start with 00 00)")
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
        raise IDXError(f"{path}: unsupported type code 0x{type_code:02X} (supported: {known})")
    if not 1 <= num_dims <= _MAX_DIMS:
        raise IDXError(f"{path}: unsupported number of dimensions {num_dims} (must be 1..4)")

    header_size = 4 + 4 * num_dims
    if len(data) < header_size:
        raise IDXError(
            f"{path}: truncated header ({len(data)} bytes, need {header_size} for {num_dims} dims)"
        )
    dims = struct.unpack(f">{num_dims}I", data[4:header_size])

    dtype = IDX_DTYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize
    payload = len(data) - header_size
    if payload != expected:
        problem = "truncated payload" if payload < expected else "trailing bytes after payload"
        raise IDXError(
            f"{path}: {problem}: dims {dims} of {dtype.name} need {expected} bytes, found {payload}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(dims)
    return array.astype(dtype.newbyteorder("="))
