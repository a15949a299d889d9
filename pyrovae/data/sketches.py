"""Sketch data sets of the sketch-rnn paper (Ha & Eck 2018) as padded stroke-5 tensors.

Files, under [`pyrovae.data.data_root`][] (``$PYROVAE_DATA`` or ``~/.cache/pyrovae``), at the
layout of their repository (github.com/hardmaru/sketch-rnn-datasets)::

    ROOT/sketch-rnn-datasets/aaron_sheep/aaron_sheep.npz   7400/300/300 sheep
    ROOT/sketch-rnn-datasets/kanji/short_kanji.npz         10000/600/500 kanji
    ROOT/sketch-rnn-datasets/omniglot/omniglot.npz         30000/1000/1000 Omniglot symbols

Each ``.npz`` holds ``train``, ``valid`` and ``test``: object arrays of ``[L_i, 3]`` int16
*stroke-3* arrays ``(dx, dy, pen_lifted)``, where ``pen_lifted = 1`` means the pen leaves the
paper after this point. The arrays are pickled, so a file is unpickled only after its md5 matched
the published one (a missing file is downloaded, md5-checked and written atomically; a present
file is always checked, since it is small and unpickling an unchecked file is unsafe).

*Stroke-5* (the paper's format) is ``(dx, dy, p1, p2, p3)``: ``p1`` = pen stays down after this
point, ``p2`` = pen lifts, ``p3`` = the sketch has ended. A sketch of ``L`` points becomes rows
``0..L-1`` with ``p3 = 0``; every later row is the end row ``(0, 0, 0, 0, 1)``. Offsets are divided
by the training set's scale: the standard deviation of all its ``dx`` and ``dy`` values (the
paper's normalisation), computed after the length filter.
"""

from __future__ import annotations

import functools
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyrovae.data.download import checked_file
from pyrovae.data.mnist import (
    ChecksumError,
    _md5,
    data_root,
)

__all__ = [
    "SKETCH_DATASETS",
    "SKETCH_URL",
    "SketchData",
    "load_sketches",
    "load_stroke3",
    "sketch_file",
    "stroke3_to_stroke5",
    "stroke5_to_stroke3",
]

logger = logging.getLogger(__name__)

#: Base URL of the canonical copies (GitHub raw files of hardmaru/sketch-rnn-datasets, master).
SKETCH_URL = "https://raw.githubusercontent.com/hardmaru/sketch-rnn-datasets/master/"
FOLDER = "sketch-rnn-datasets"
#: name -> (path relative to ``ROOT/sketch-rnn-datasets`` and to ``SKETCH_URL``, md5).
SKETCH_DATASETS = {
    "aaron_sheep": ("aaron_sheep/aaron_sheep.npz", "9705bf92466b10da7f2654cac90a489d"),
    "kanji": ("kanji/short_kanji.npz", "2bc0534c497ded3b9931bc50ee06be4f"),
    "omniglot": ("omniglot/omniglot.npz", "7f0ab4cb4bbc0022fce4c3f3bf2b51a7"),
}
SPLITS = ("train", "valid", "test")
DOWNLOAD_TIMEOUT_S = 30.0


def _check_name(name: str) -> str:
    if name not in SKETCH_DATASETS:
        raise ValueError(f"unknown sketch data set {name!r}; valid: {', '.join(SKETCH_DATASETS)}")
    return name


def sketch_file(
    name: str, root: str | os.PathLike | None = None, download: bool = True
) -> Path:
    """Path of the md5-checked ``.npz`` of ``name``, downloading it first when missing.

    Raises:
        ValueError: unknown ``name``.
        DatasetNotFoundError: missing and not downloadable (offline, or ``download=False``).
        ChecksumError: the stored file or the download has the wrong md5 (a bad download is
            discarded; a bad stored file is left alone and named in the message).
    """
    relative, expected = SKETCH_DATASETS[_check_name(name)]
    path = data_root(root) / FOLDER / relative
    return checked_file(
        path, SKETCH_URL + relative, expected, download=download,
        missing=lambda reason: (
            f"{path} is missing ({reason}). Copy {relative} from {SKETCH_URL} there, or set "
            f"PYROVAE_DATA (root= in Python, "
            f"--data-root on the command line) to a folder that contains {FOLDER}/{relative}."
        ),
    )


def load_stroke3(
    name: str, root: str | os.PathLike | None = None, download: bool = True
) -> dict[str, list[np.ndarray]]:
    """The three splits of ``name`` as lists of ``[L_i, 3]`` int16 stroke-3 arrays.

    The md5 is checked (by [`sketch_file`][]) before anything is unpickled.
    """
    path = sketch_file(name, root, download)
    splits = _decoded(str(path.resolve()), SKETCH_DATASETS[name][1])
    return {split: list(sketches) for split, sketches in splits.items()}


@functools.lru_cache(maxsize=4)
def _decoded(path: str, expected_md5: str) -> dict[str, tuple[np.ndarray, ...]]:
    """Unpickled splits of a file, read-only, cached per process (the caller checked the md5;
    the bytes read here are checked again before unpickling)."""
    data = Path(path).read_bytes()
    if _md5(data) != expected_md5:  # the file changed between the check and this read
        raise ChecksumError(f"{path} changed while it was read; it was not unpickled")
    with np.load(io.BytesIO(data), encoding="latin1", allow_pickle=True) as npz:
        splits = {split: tuple(np.asarray(s) for s in npz[split]) for split in SPLITS}
    for split, sketches in splits.items():
        for s in sketches:
            if s.ndim != 2 or s.shape[1] != 3:
                raise ValueError(f"{path}: {split} holds an array of shape {s.shape}, not [L, 3]")
            s.flags.writeable = False
    return splits


def stroke3_to_stroke5(
    sketches: list[np.ndarray], num_steps: int | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Pad stroke-3 sketches into one stroke-5 tensor.

    Args:
        sketches: ``[L_i, 3]`` arrays ``(dx, dy, pen_lifted)``.
        num_steps: T, rows of the result; default ``max L_i + 1`` (one end row at least).
        dtype: floating dtype of the result (default float32).

    Returns:
        ``(x [N, T, 5], lengths [N] long)``: rows ``t < L_i`` are the points, later rows
        ``(0, 0, 0, 0, 1)``.
    """
    lengths = torch.tensor([len(s) for s in sketches], dtype=torch.long)
    longest = int(lengths.max()) if len(sketches) else 0
    num_steps = longest + 1 if num_steps is None else int(num_steps)
    if num_steps < longest:
        raise ValueError(f"num_steps={num_steps} is shorter than the longest sketch ({longest})")
    x = torch.zeros(len(sketches), num_steps, 5, dtype=dtype)
    x[:, :, 4] = 1.0
    if longest:
        flat = torch.as_tensor(np.concatenate(sketches).astype(np.float64), dtype=dtype)
        rows = torch.repeat_interleave(torch.arange(len(sketches)), lengths)
        starts = torch.cumsum(lengths, 0) - lengths
        steps = torch.arange(len(flat)) - torch.repeat_interleave(starts, lengths)
        pen_lifted = flat[:, 2]
        x[rows, steps] = torch.stack(
            [flat[:, 0], flat[:, 1], 1.0 - pen_lifted, pen_lifted, torch.zeros_like(pen_lifted)],
            dim=1,
        )
    return x, lengths


def stroke5_to_stroke3(x: Tensor, lengths: Tensor) -> list[np.ndarray]:
    """Inverse of [`stroke3_to_stroke5`][]: the first ``lengths[i]`` rows as ``(dx, dy, p2)``."""
    out = []
    for row, n in zip(x.detach().cpu(), lengths.tolist(), strict=True):
        out.append(torch.cat([row[:n, :2], row[:n, 3:4]], dim=1).numpy())
    return out


@dataclass(frozen=True, eq=False)
class SketchData:
    """One split of a sketch data set.

    Attributes:
        x: stroke-5 sketches ``[N, T, 5]``, offsets divided by ``scale``.
        lengths: points per sketch ``[N]`` (long, on ``x``'s device); ``T >= max(lengths) + 1``.
        scale: the training set's offset standard deviation the offsets were divided by.
        name: the data set's name.
        split: ``"train"``, ``"valid"`` or ``"test"``.
    """

    x: Tensor
    lengths: Tensor
    scale: float
    name: str
    split: str

    def __len__(self) -> int:
        return self.x.shape[0]


def _filter(sketches: list[np.ndarray], max_length: int | None) -> list[np.ndarray]:
    if max_length is None:
        return sketches
    return [s for s in sketches if len(s) <= max_length]


def offset_scale(sketches: list[np.ndarray]) -> float:
    """Standard deviation of all ``dx`` and ``dy`` values of ``sketches`` (the paper's scale)."""
    offsets = np.concatenate([np.asarray(s[:, :2], dtype=np.float64).ravel() for s in sketches])
    return float(offsets.std())


def load_sketches(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = True,
    max_length: int | None = None,
    num_steps: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SketchData:
    """Load one split as normalised, padded stroke-5 tensors.

    Args:
        name: ``"aaron_sheep"``, ``"kanji"`` or ``"omniglot"``.
        split: ``"train"`` (default), ``"valid"`` or ``"test"``.
        root: data root (default ``None``: see [`pyrovae.data.data_root`][]).
        download: fetch a missing file (default True).
        max_length: drop sketches with more points (default ``None``: keep all); the training
            split's scale is computed after this filter, as in the paper.
        num_steps: rows T of the tensor (default: ``max_length + 1`` if given, else the longest
            sketch of the split plus one), so that all splits can share one T.
        device: device of the tensors (default CPU).
        dtype: floating dtype of ``x`` (default float32).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    splits = load_stroke3(name, root, download)
    scale = offset_scale(_filter(splits["train"], max_length))
    sketches = _filter(splits[split], max_length)
    if num_steps is None and max_length is not None:
        num_steps = max_length + 1
    x, lengths = stroke3_to_stroke5(sketches, num_steps, dtype=dtype)
    x[:, :, :2] /= scale
    device = torch.device("cpu") if device is None else torch.device(device)
    return SketchData(x.to(device), lengths.to(device), scale, name, split)
