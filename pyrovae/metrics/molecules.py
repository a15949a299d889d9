"""Metrics of generated molecules (MOSES-style), computed with RDKit.

RDKit is an optional dependency (``pip install pyrovae[chem]``); it is imported when a function
is first called, so importing this module never fails. Definitions follow the MOSES benchmark
(Polykovskiy et al. 2020), with the differences stated per function:

* validity: the fraction of strings RDKit parses into a molecule (the empty string is invalid);
* uniqueness@k: among the first ``k`` valid strings, the fraction of distinct canonical SMILES;
* novelty: among the distinct valid canonical SMILES, the fraction not in the training set;
* internal diversity: one minus the mean Tanimoto similarity of Morgan fingerprints (radius 2,
  1024 bits) over distinct pairs of valid molecules;
* reconstruction accuracy: the fraction of decoded strings whose canonical SMILES equals the
  input's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "canonical_smiles",
    "internal_diversity",
    "molecule_property",
    "novelty",
    "penalized_logp",
    "reconstruction_accuracy",
    "uniqueness",
    "validity",
]

logger = logging.getLogger(__name__)

MORGAN_RADIUS = 2
MORGAN_BITS = 1024


def _chem():
    try:
        from rdkit import Chem, RDLogger
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "molecule metrics need RDKit: pip install 'rdkit>=2023.9' (or pyrovae[chem])"
        ) from error
    RDLogger.DisableLog("rdApp.*")  # parse errors of invalid samples are expected, not news
    return Chem


def to_molecule(smiles: str):
    """The RDKit molecule of ``smiles``, or ``None`` if it is empty or does not parse."""
    if not smiles:
        return None
    return _chem().MolFromSmiles(smiles)


def canonical_smiles(smiles: str) -> str | None:
    """RDKit's canonical SMILES of ``smiles``, or ``None`` for an invalid string."""
    molecule = to_molecule(smiles)
    return None if molecule is None else _chem().MolToSmiles(molecule)


def validity(smiles: Sequence[str]) -> float:
    """Fraction of ``smiles`` that RDKit parses (0 for an empty list is undefined: raises)."""
    if not smiles:
        raise ValueError("validity of an empty list is undefined")
    return sum(to_molecule(s) is not None for s in smiles) / len(smiles)


def _valid_canonical(smiles: Iterable[str]) -> list[str]:
    return [c for c in map(canonical_smiles, smiles) if c is not None]


def uniqueness(smiles: Sequence[str], k: int | None = None) -> float:
    """Fraction of distinct canonical SMILES among the first ``k`` valid strings (MOSES unique@k).

    Args:
        smiles: generated strings, invalid ones included (they are skipped).
        k: how many valid strings to look at (default: all). With fewer than ``k`` valid
            strings, all of them are used and a warning is logged, as MOSES does.
    """
    valid = _valid_canonical(smiles)
    if not valid:
        raise ValueError("uniqueness needs at least one valid molecule")
    if k is not None:
        if len(valid) < k:
            logger.warning("only %d valid molecules for unique@%d", len(valid), k)
        valid = valid[:k]
    return len(set(valid)) / len(valid)


def novelty(smiles: Sequence[str], reference: Iterable[str], canonicalize: bool = False) -> float:
    """Fraction of the distinct valid canonical ``smiles`` that are not in ``reference``.

    Args:
        smiles: generated strings (invalid ones are skipped).
        reference: the training set's SMILES.
        canonicalize: canonicalize ``reference`` first (default False: MOSES stores canonical
            SMILES and its novelty compares against them as they are; True costs one RDKit
            parse per reference molecule).
    """
    generated = set(_valid_canonical(smiles))
    if not generated:
        raise ValueError("novelty needs at least one valid molecule")
    known = set(_valid_canonical(reference)) if canonicalize else set(reference)
    return len(generated - known) / len(generated)


def fingerprints(smiles: Sequence[str]) -> list:
    """Morgan bit vectors (radius 2, 1024 bits) of the valid strings of ``smiles``."""
    from rdkit.Chem import rdFingerprintGenerator

    generator = rdFingerprintGenerator.GetMorganGenerator(
        radius=MORGAN_RADIUS, fpSize=MORGAN_BITS
    )
    molecules = [m for m in map(to_molecule, smiles) if m is not None]
    return [generator.GetFingerprint(m) for m in molecules]


def internal_diversity(smiles: Sequence[str]) -> float:
    """``1 - mean Tanimoto similarity`` over distinct pairs of valid molecules.

    Fingerprints: Morgan, radius 2, 1024 bits. MOSES's IntDiv averages over all ordered pairs
    including each molecule with itself (similarity 1), which lowers it by about ``1/n``
    relative to this value for ``n`` molecules (1e-4 for 10 000).
    """
    from rdkit import DataStructs

    prints = fingerprints(smiles)
    n = len(prints)
    if n < 2:
        raise ValueError("internal diversity needs at least two valid molecules")
    total = 0.0
    for i in range(n - 1):
        total += float(np.sum(DataStructs.BulkTanimotoSimilarity(prints[i], prints[i + 1 :])))
    return 1.0 - total / (n * (n - 1) / 2)


def reconstruction_accuracy(inputs: Sequence[str], outputs: Sequence[str]) -> float:
    """Fraction of pairs whose canonical SMILES agree (an invalid output never does)."""
    if len(inputs) != len(outputs) or not inputs:
        raise ValueError("need two non-empty lists of the same length")
    hits = 0
    for source, decoded in zip(inputs, outputs, strict=True):
        target = canonical_smiles(source)
        hits += target is not None and canonical_smiles(decoded) == target
    return hits / len(inputs)


def penalized_logp(molecule) -> float:
    """``logP - SA - ring penalty`` of an RDKit molecule (Gómez-Bombarelli et al. 2018).

    Crippen logP, minus the synthetic-accessibility score (Ertl & Schuffenhauer 2009, 1 easy to
    10 hard; RDKit's Contrib ``sascorer``), minus ``max(0, largest ring size - 6)``. The terms
    are not normalised (later papers, e.g. the junction-tree VAE, divide each by its spread in
    the ZINC training set; their numbers are on another scale).
    """
    import os
    import sys

    from rdkit.Chem import Crippen, RDConfig

    folder = os.path.join(RDConfig.RDContribDir, "SA_Score")
    if folder not in sys.path:
        sys.path.append(folder)
    import sascorer

    rings = [len(ring) for ring in molecule.GetRingInfo().AtomRings()]
    penalty = max(0, max(rings, default=0) - 6)
    return Crippen.MolLogP(molecule) - sascorer.calculateScore(molecule) - penalty


def molecule_property(smiles: Sequence[str], name: str = "logp") -> np.ndarray:
    """``"logp"`` (Crippen), ``"qed"`` or ``"penalized_logp"`` (see [`penalized_logp`][]) of
    each string; NaN for an invalid one."""
    from rdkit.Chem import QED, Crippen

    functions = {"logp": Crippen.MolLogP, "qed": QED.qed, "penalized_logp": penalized_logp}
    if name not in functions:
        raise ValueError(f"unknown property {name!r}; choose one of {sorted(functions)}")
    values = []
    for s in smiles:
        molecule = to_molecule(s)
        values.append(np.nan if molecule is None else functions[name](molecule))
    return np.asarray(values, dtype=float)
