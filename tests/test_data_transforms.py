"""Binarisation and semi-supervised splits."""

from __future__ import annotations

import pytest
import torch

from pyrovae.data import DynamicBinarized, SplitIndices, binarize, labelled_split, threshold

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64]


def probabilities(device: str, dtype: torch.dtype, shape=(400, 50)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    return torch.rand(shape, generator=generator, dtype=dtype).to(device)


def assert_mean_matches(x_bin: torch.Tensor, p: torch.Tensor) -> None:
    """The mean of Bernoulli(p) draws lies within 5 binomial standard deviations of mean(p)."""
    std = (p * (1 - p)).sum().sqrt() / p.numel()
    assert abs(x_bin.mean().item() - p.mean().item()) < 5 * std.item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_binarize_is_seeded_bernoulli(device: str, dtype: torch.dtype) -> None:
    p = probabilities(device, dtype)

    x_bin = binarize(p, seed=0)

    assert x_bin.shape == p.shape and x_bin.dtype == dtype and x_bin.device == p.device
    assert set(x_bin.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(x_bin, binarize(p, seed=0))
    assert not torch.equal(x_bin, binarize(p, seed=1))
    assert_mean_matches(x_bin, p)


def test_binarize_extremes_and_errors() -> None:
    p = torch.tensor([[0.0, 1.0, 0.0, 1.0]]).expand(1000, 4)
    assert torch.equal(binarize(p, seed=3), p)
    with pytest.raises(ValueError, match="floating"):
        binarize(torch.ones(3, dtype=torch.long), seed=0)


@pytest.mark.parametrize(
    ("level", "expected"), [(0.5, [0, 0, 0, 1, 1]), (0.2, [0, 1, 1, 1, 1]), (1.0, [0, 0, 0, 0, 0])]
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_threshold(level: float, expected: list[int], dtype: torch.dtype) -> None:
    x = torch.tensor([0.0, 0.3, 0.5, 0.51, 1.0], dtype=dtype)
    assert torch.equal(threshold(x, level), torch.tensor(expected, dtype=dtype))


def test_threshold_default_level() -> None:
    x = torch.tensor([[0.5, 0.7]])
    assert torch.equal(threshold(x), torch.tensor([[0.0, 1.0]]))


@pytest.mark.parametrize("device", DEVICES)
def test_dynamic_binarization_is_a_function_of_seed_and_epoch(device: str) -> None:
    p = probabilities(device, torch.float32)
    stream = DynamicBinarized(p, seed=7)

    epochs = [stream.for_epoch(epoch) for epoch in range(3)]

    assert len(stream) == p.shape[0] and stream.x is p
    assert all(isinstance(draw, tuple) and len(draw) == 1 for draw in epochs)
    assert not torch.equal(epochs[0][0], epochs[1][0])
    assert not torch.equal(epochs[1][0], epochs[2][0])
    resumed = DynamicBinarized(p.clone(), seed=7)  # e.g. a run restarted from a checkpoint
    assert torch.equal(resumed.for_epoch(2)[0], epochs[2][0])
    assert not torch.equal(DynamicBinarized(p, seed=8).for_epoch(2)[0], epochs[2][0])
    for (x_bin,) in epochs:
        assert x_bin.dtype == p.dtype and x_bin.device == p.device
        assert_mean_matches(x_bin, p)


@pytest.mark.parametrize(
    ("x", "seed", "epoch"),
    [
        (torch.ones(3, 2, dtype=torch.long), 0, 0),
        (torch.ones(3, 2), -1, 0),
        (torch.ones(3, 2), 0, -1),
    ],
    ids=["integer x", "negative seed", "negative epoch"],
)
def test_dynamic_binarization_rejects_bad_arguments(x: torch.Tensor, seed: int, epoch: int) -> None:
    with pytest.raises(ValueError):
        DynamicBinarized(x, seed).for_epoch(epoch)


def shuffled_labels(n: int = 1000, num_classes: int = 10) -> torch.Tensor:
    generator = torch.Generator().manual_seed(99)
    return (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]


@pytest.mark.parametrize(("n_labelled", "n_validation"), [(100, 200), (10, 0), (500, 300)])
def test_labelled_split_is_balanced_disjoint_and_covering(
    n_labelled: int, n_validation: int
) -> None:
    y = shuffled_labels()

    split = labelled_split(y, n_labelled, n_validation, seed=0)

    assert isinstance(split, SplitIndices)
    assert len(split.labelled) == n_labelled and len(split.validation) == n_validation
    assert torch.bincount(y[split.labelled], minlength=10).tolist() == [n_labelled // 10] * 10
    everything = torch.cat([split.labelled, split.unlabelled, split.validation])
    assert torch.equal(everything.sort().values, torch.arange(len(y)))  # disjoint and covering
    for indices in split:
        assert indices.dtype == torch.long and torch.equal(indices, indices.sort().values)


def test_labelled_split_is_deterministic_per_seed() -> None:
    y = shuffled_labels()
    first, again = labelled_split(y, 100, 200, seed=3), labelled_split(y, 100, 200, seed=3)
    other = labelled_split(y, 100, 200, seed=4)

    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first.labelled, other.labelled)
    assert not torch.equal(first.validation, other.validation)


def test_labelled_split_with_explicit_num_classes_and_uneven_classes() -> None:
    y = torch.tensor([0] * 50 + [1] * 5 + [2] * 20)

    split = labelled_split(y, n_labelled=12, n_validation=0, seed=0, num_classes=3)

    assert torch.bincount(y[split.labelled]).tolist() == [4, 4, 4]
    assert len(split.unlabelled) == len(y) - 12


BAD_SPLITS = {
    "not a multiple": (shuffled_labels(), 15, 0, None, "multiple of num_classes=10"),
    "zero labelled": (shuffled_labels(), 0, 0, None, "positive multiple"),
    "fewer than classes": (shuffled_labels(), 5, 0, None, "positive multiple"),
    "negative validation": (shuffled_labels(), 10, -1, None, "n_validation"),
    "validation too large": (shuffled_labels(), 10, 1001, None, "n_validation"),
    "class too small": (torch.tensor([0] * 30 + [1] * 3), 10, 0, None, "class 1: 3"),
    "validation empties a class": (torch.tensor([0] * 30 + [1] * 5), 10, 34, None, "only"),
    "class absent": (shuffled_labels(), 110, 0, 11, "class 10: 0"),
    "label out of range": (shuffled_labels(), 10, 0, 5, "labels must lie in 0..4"),
    "float labels": (shuffled_labels().float(), 10, 0, None, "integer"),
}


@pytest.mark.parametrize(
    ("y", "n_labelled", "n_validation", "num_classes", "message"),
    BAD_SPLITS.values(),
    ids=BAD_SPLITS.keys(),
)
def test_labelled_split_rejects_bad_requests(y, n_labelled, n_validation, num_classes, message):
    with pytest.raises(ValueError, match=message):
        labelled_split(y, n_labelled, n_validation, seed=0, num_classes=num_classes)
