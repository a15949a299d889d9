"""SMILES strings: the MOSES splits on disk, a token vocabulary, and padded integer tensors.

Files (the MOSES benchmark, Polykovskiy et al. 2020, as shipped in its ``molsets`` package)::

    ROOT/moses/{train.csv.gz, test.csv.gz, test_scaffolds.csv.gz}   # one column ``SMILES``

``ROOT`` is [`pyrovae.data.data_root`][] (an argument, else ``$PYROVAE_DATA``, else
``~/.cache/pyrovae``). Missing files are downloaded from the MOSES GitHub repository
(``molecularsets/moses``, folder ``moses/dataset/data``), md5-checked and written atomically,
with the machinery of [`pyrovae.data.mnist`][].

Tokens: a SMILES string is split by a regular expression into chemically meaningful tokens
rather than characters: a bracket atom (``[nH]``, ``[C@@H]``, ``[N+]``) is one token, as are the
two-letter organic atoms ``Cl`` and ``Br`` and two-digit ring closures (``%10``). A character
model must learn to close brackets and never to emit ``l`` without ``C``; with these tokens
such strings cannot be written, and sequences get shorter. On the MOSES training split the
vocabulary has 24 tokens besides ``<pad>``, ``<bos>`` and ``<eos>`` (``[nH]`` and ``[H]`` the
only bracket atoms). Every string is checked to be the concatenation of its tokens, so encoding
never loses a character.

Usage::

    from pyrovae.data.smiles import SmilesVocabulary, load_smiles

    train = load_smiles("train", size=100_000, seed=0)       # list of 100 000 strings
    vocab = SmilesVocabulary.build(train)
    tokens, lengths = vocab.encode(train)                    # [N, T] long, [N] long
    assert vocab.decode(tokens[:3]) == train[:3]
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyrovae.data.download import checked_file
from pyrovae.data.mnist import (
    data_root,
)

__all__ = [
    "MOSES_MD5SUMS",
    "MOSES_SPLITS",
    "MOSES_URL",
    "SmilesVocabulary",
    "ensure_moses",
    "load_smiles",
    "tokenize",
]

logger = logging.getLogger(__name__)

MOSES_FOLDER = "moses"
MOSES_SPLITS = ("train", "test", "test_scaffolds")
#: Where missing files are fetched from: the MOSES repository's packaged data folder.
MOSES_URL = "https://raw.githubusercontent.com/molecularsets/moses/master/moses/dataset/data/"
#: file name -> md5 of the gzip file (molsets 0.3.1).
MOSES_MD5SUMS = {
    "train.csv.gz": "712ffb13b3c0e4c24ab3faab75f5eb9e",
    "test.csv.gz": "67c1f90c86ff795e47485b2d615dc1c8",
    "test_scaffolds.csv.gz": "463b155c93d85d6806c6d448dcd476b7",
}

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
_TOKEN = re.compile(r"\[[^\[\]]+\]|Br|Cl|%\d\d|[A-Za-z]|\d|[()=#\-+\\/:~@?>*$.]")


def tokenize(smiles: str) -> list[str]:
    """Split one SMILES string into tokens (bracket atoms, ``Cl``, ``Br``, ``%NN`` are one each).

    Raises:
        ValueError: the string has a character no token covers (e.g. a space or an
            unbalanced ``[``); the message names the string.
    """
    tokens = _TOKEN.findall(smiles)
    if "".join(tokens) != smiles:
        raise ValueError(f"cannot tokenize SMILES {smiles!r}: it has characters outside tokens")
    return tokens


def _file_name(split: str) -> str:
    if split not in MOSES_SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(MOSES_SPLITS)}")
    return f"{split}.csv.gz"


def ensure_moses(
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = True,
) -> Path:
    """The path of one MOSES split's file, downloaded if missing, its md5 always checked.

    Args:
        split: ``"train"``, ``"test"`` or ``"test_scaffolds"``; default ``"train"``.
        root: data root, see [`pyrovae.data.data_root`][]; default ``None``.
        download: fetch a missing file from `MOSES_URL` (default ``True``).

    Raises:
        DatasetNotFoundError: the file is missing and could not be downloaded (offline or
            ``download=False``); the message names the path and the URL.
        ChecksumError: the stored or downloaded file has the wrong md5 (a download is
            discarded, a stored file is left for the user to delete).
    """
    file_name = _file_name(split)
    path = data_root(root) / MOSES_FOLDER / file_name
    expected = MOSES_MD5SUMS[file_name]
    url = MOSES_URL + file_name
    return checked_file(
        path, url, expected, download=download,
        missing=lambda reason: (
            f"MOSES file {path} is missing ({reason}). Download {url} to that path, or set "
            f"PYROVAE_DATA (root= in Python, "
            f"--data-root on the command line) to a folder holding {MOSES_FOLDER}/{file_name}."
        ),
    )


@functools.lru_cache(maxsize=4)
def _read_split(path: str) -> tuple[str, ...]:
    with gzip.open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="ascii") as text:
        reader = csv.reader(text)
        header = next(reader, None)
        if header is None or header[0] != "SMILES":
            raise ValueError(f"{path}: expected a CSV with the header 'SMILES', got {header!r}")
        return tuple(row[0] for row in reader if row)


def load_smiles(
    split: str = "train",
    size: int | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    download: bool = True,
) -> list[str]:
    """SMILES strings of one MOSES split, optionally a random subset.

    Args:
        split: ``"train"`` (1 584 663 molecules), ``"test"`` (176 074) or ``"test_scaffolds"``.
        size: ``None`` (default) for the whole split in file order, else ``size`` molecules drawn
            without replacement with ``seed`` (a fixed seed gives the same subset everywhere).
        seed: seed of the subset (default 0).
        root: data root (see [`ensure_moses`][]).
        download: fetch a missing split (see [`ensure_moses`][]).
    """
    path = ensure_moses(split, root, download)
    smiles = _read_split(str(path.resolve()))
    if size is None:
        return list(smiles)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= len(smiles):
        raise ValueError(f"size must be an integer in 1..{len(smiles)}, got {size!r}")
    rows = np.random.default_rng(seed).choice(len(smiles), size=size, replace=False)
    return [smiles[i] for i in rows]


class SmilesVocabulary:
    """Tokens of a SMILES corpus with padding (index 0), start and end tokens.

    Args:
        tokens: the token list, in index order, starting with ``<pad>``, ``<bos>``, ``<eos>``
            (as built by [`build`][]; stored in a model's config to decode after reloading).
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if tokens[:3] != [PAD, BOS, EOS] or len(set(tokens)) != len(tokens):
            raise ValueError(f"tokens must start with {PAD}, {BOS}, {EOS} and be distinct")
        self.tokens = tokens
        self.index = {token: i for i, token in enumerate(tokens)}
        self.pad, self.bos, self.eos = 0, 1, 2

    @classmethod
    def build(cls, smiles: Iterable[str]) -> SmilesVocabulary:
        """The vocabulary of ``smiles`` (the training split): specials, then sorted tokens."""
        seen: set[str] = set()
        for s in smiles:
            seen.update(tokenize(s))
        return cls([PAD, BOS, EOS, *sorted(seen)])

    def __len__(self) -> int:
        return len(self.tokens)

    def covers(self, smiles: str) -> bool:
        """Whether every token of ``smiles`` is in the vocabulary."""
        return all(token in self.index for token in tokenize(smiles))

    def encode(
        self, smiles: Sequence[str], max_length: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Padded token indices and lengths.

        Args:
            smiles: N strings.
            max_length: number of tokens a molecule may have, without ``<bos>``/``<eos>``
                (default: the longest in ``smiles``).

        Returns:
            ``(tokens, lengths)``: ``tokens`` [N, L + 2] long, each row ``<bos> t_1 .. t_n
            <eos> <pad>...``; ``lengths`` [N] long, ``n + 1`` (the tokens after ``<bos>`` up to
            and including ``<eos>``: the steps the decoder predicts).

        Raises:
            ValueError: a token outside the vocabulary, or a molecule longer than
                ``max_length``; the message names the molecule.
        """
        rows = [tokenize(s) for s in smiles]
        longest = max((len(r) for r in rows), default=0)
        max_length = longest if max_length is None else int(max_length)
        out = np.zeros((len(rows), max_length + 2), dtype=np.int64)
        lengths = np.zeros(len(rows), dtype=np.int64)
        for n, row in enumerate(rows):
            if len(row) > max_length:
                raise ValueError(f"{smiles[n]!r} has {len(row)} tokens > max_length={max_length}")
            try:
                ids = [self.index[token] for token in row]
            except KeyError as error:
                raise ValueError(f"{smiles[n]!r} has token {error.args[0]!r} outside the "
                                 "vocabulary") from None
            out[n, 0] = self.bos
            out[n, 1 : len(ids) + 1] = ids
            out[n, len(ids) + 1] = self.eos
            lengths[n] = len(ids) + 1
        return torch.from_numpy(out), torch.from_numpy(lengths)

    def decode(self, ids: Tensor) -> list[str]:
        """Strings from index rows [N, T] (with or without a leading ``<bos>``).

        Each row is read up to its first ``<eos>`` (or its end); ``<bos>`` and ``<pad>`` are
        skipped.
        """
        out = []
        skip = {self.pad, self.bos}
        for row in ids.tolist():
            chars = []
            for i in row:
                if i == self.eos:
                    break
                if i not in skip:
                    chars.append(self.tokens[i])
            out.append("".join(chars))
        return out
