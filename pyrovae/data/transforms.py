"""Tensor transforms for image data in [0, 1]: binarisation and semi-supervised splits.

Every function works on whole tensors (no per-sample Python loops) and returns results on the
input's device with the input's dtype. Randomness comes from a ``torch.Generator`` seeded by the
caller, never from the global RNG, so results are reproducible and independent of other code.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DynamicBinarized", "SplitIndices", "binarize", "epoch_seed", "labelled_split", "threshold",
]


def _generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def check_probabilities(x, what: str) -> None:
    """Raise a ``ValueError`` unless ``x`` is a floating tensor with values in [0, 1] (one host
    sync). Images in 0..255 and NumPy arrays get a message saying how to convert them."""
    if isinstance(x, np.ndarray):
        raise ValueError(
            f"{what} needs a torch.Tensor, got a NumPy array of {x.dtype}: convert it with "
            "torch.from_numpy(x).float() (and divide images in 0..255 by 255)"
        )
    if not isinstance(x, Tensor):
        raise ValueError(f"{what} needs a torch.Tensor of probabilities, got {type(x).__name__}")
    if not x.is_floating_point():
        hint = ": images in 0..255 must be divided by 255" if x.dtype == torch.uint8 else ""
        raise ValueError(f"{what} needs floating probabilities in [0, 1], got {x.dtype}{hint}")
    if x.numel():
        low, high = float(x.min()), float(x.max())
        if high > 1 or low < 0:
            hint = "images in 0..255 must be divided by 255 first" if high > 1 else "rescale it"
            raise ValueError(
                f"{what} needs probabilities in [0, 1], got values in [{low:g}, {high:g}]: {hint}"
            )
        if high != high or low != low:
            raise ValueError(f"{what} got NaN values")


def binarize(x: Tensor, seed: int) -> Tensor:
    """Static binarisation: one Bernoulli draw with probabilities ``x``.

    Args:
        x: probabilities in [0, 1], any shape (typically ``[N, D]``), floating dtype.
        seed: seed of the generator (created on ``x``'s device); the same seed gives the same
            result on every call.

    Returns:
        Tensor of ``x``'s shape, dtype and device with values in {0, 1}.
    """
    check_probabilities(x, "binarize")
    return _bernoulli(x, seed)


def _bernoulli(x: Tensor, seed: int) -> Tensor:
    return torch.bernoulli(x, generator=_generator(x.device, seed))


def threshold(x: Tensor, level: float = 0.5) -> Tensor:
    """Deterministic binarisation: 1 where ``x > level``, else 0.

    Args:
        x: values, any shape.
        level: threshold; default 0.5. Values equal to ``level`` map to 0.

    Returns:
        Tensor of ``x``'s shape, dtype and device with values in {0, 1}.
    """
    return (x > level).to(x.dtype)


def mixed_seed(*words: int) -> int:
    """A 64-bit seed that is a deterministic, well-mixed function of the integers ``words``."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(1, dtype=np.uint64)
    return int(state[0])


def epoch_seed(seed: int, epoch: int) -> int:
    """A 64-bit seed that is a deterministic, well-mixed function of ``(seed, epoch)``."""
    return mixed_seed(seed, epoch)


class DynamicBinarized:
    """Dynamic binarisation: a fresh Bernoulli draw of the whole data set every epoch.

    The draw for an epoch depends only on ``(seed, epoch)``, so a run resumed at epoch ``k``
    sees exactly the data it would have seen without interruption.

    Args:
        x: probabilities in [0, 1], shape ``[N, D]``, floating dtype; kept as ``self.x``.
            Checked once here: a NumPy array, an integer tensor or values outside [0, 1]
            (images in 0..255 not yet divided by 255) are a ``ValueError`` saying what to do.
        seed: non-negative base seed.

    Example::

        stream = DynamicBinarized(data.x, seed=0)
        for epoch in range(num_epochs):
            (x_bin,) = stream.for_epoch(epoch)
    """

    def __init__(self, x: Tensor, seed: int) -> None:
        check_probabilities(x, "DynamicBinarized")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.x = x
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.x.shape[0]

    def for_epoch(self, epoch: int) -> tuple[Tensor]:
        """Return ``(x_bin,)``: the binarised data of epoch ``epoch >= 0``, shape of ``self.x``."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        return (_bernoulli(self.x, epoch_seed(self.seed, int(epoch))),)

    def __repr__(self) -> str:
        return f"DynamicBinarized(x={tuple(self.x.shape)}, seed={self.seed})"


class SplitIndices(NamedTuple):
    """Disjoint index sets covering ``range(N)``, each a sorted ``LongTensor`` on ``y``'s device."""

    labelled: Tensor
    unlabelled: Tensor
    validation: Tensor


def labelled_split(
    y: Tensor,
    n_labelled: int,
    n_validation: int,
    seed: int,
    num_classes: int | None = None,
) -> SplitIndices:
    """Split indices into a class-balanced labelled set, an unlabelled set and a validation set.

    First ``n_validation`` indices, drawn uniformly at random, are set aside for validation. From
    the rest, ``n_labelled // num_classes`` indices of every class are drawn uniformly at random as
    the labelled set. Everything else is unlabelled.

    Args:
        y: integer labels in ``0..num_classes-1``, shape ``[N]``.
        n_labelled: size of the labelled set; a positive multiple of ``num_classes``.
        n_validation: size of the validation set, ``0 <= n_validation <= N``.
        seed: seed of the CPU ``torch.Generator`` used for both draws (same result on any device).
        num_classes: number of classes; default ``None`` means ``y.max() + 1``.

    Returns:
        [`SplitIndices`][] ``(labelled, unlabelled, validation)``, sorted ``LongTensor`` s on
        ``y``'s device, disjoint, covering ``0..N-1``.

    Raises:
        ValueError: bad sizes, labels out of range, or a class with fewer than
            ``n_labelled // num_classes`` examples outside the validation set.
    """
    if y.dim() != 1 or y.is_floating_point() or y.is_complex():
        raise ValueError(f"y must be a 1-D integer tensor, got {y.dtype} of shape {tuple(y.shape)}")
    labels = y.detach().to("cpu", torch.long)
    n = labels.shape[0]
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if n else 0
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    if n_labelled < num_classes or n_labelled % num_classes:
        raise ValueError(
            f"n_labelled={n_labelled} must be a positive multiple of num_classes={num_classes} "
            "so that every class gets the same number of labelled examples"
        )
    if not 0 <= n_validation <= n:
        raise ValueError(f"n_validation={n_validation} must lie in 0..{n} (the number of labels)")

    order = torch.randperm(n, generator=_generator(torch.device("cpu"), seed))
    validation, rest = order[:n_validation], order[n_validation:]
    # Group the randomly ordered remainder by class (stable sort keeps the random order inside a
    # class) and keep the first `per_class` of every group.
    per_class = n_labelled // num_classes
    rest_labels = labels[rest]
    counts = torch.bincount(rest_labels, minlength=num_classes)
    short = (counts < per_class).nonzero().flatten().tolist()
    if short:
        found = ", ".join(f"class {c}: {int(counts[c])}" for c in short)
        raise ValueError(
            f"need {per_class} labelled examples per class but after removing {n_validation} "
            f"validation examples there are only {found}"
        )
    by_class = torch.sort(rest_labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(rest.shape[0]) - starts[by_class.values]
    chosen = torch.zeros(rest.shape[0], dtype=torch.bool)
    chosen[by_class.indices[rank < per_class]] = True
    labelled, unlabelled = rest[chosen], rest[~chosen]

    def finish(indices: Tensor) -> Tensor:
        return indices.sort().values.to(y.device)

    return SplitIndices(finish(labelled), finish(unlabelled), finish(validation))
