"""Accuracy counts examples, not batches; the validation callback selects best.pt in fit."""

import pytest
import torch

import pyrovae
from pyrovae.infer.classification import (
    accuracy,
    count_correct,
    error_rate,
    validation_callback,
)
from pyrovae.models.m2 import M2


def first_k_right(k: int):
    """A classifier that is right on rows whose first feature is < k (the row index)."""

    def classify(x):
        rows = x[:, 0].long()
        return torch.where(rows < k, rows % 3, (rows + 1) % 3)

    return classify


@pytest.mark.parametrize("batch_size", [1, 3, 7, 10, 64])
def test_accuracy_counts_examples_whatever_the_batch_size(batch_size):
    n, k = 10, 7
    x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2)
    y = torch.arange(n) % 3
    # 10 examples in batches of 3 (3, 3, 3, 1) etc.: averaging per-batch accuracies would give
    # another number; counting examples gives exactly 7/10.
    assert count_correct(first_k_right(k), x, y, batch_size) == (k, n)
    assert accuracy(first_k_right(k), x, y, batch_size) == k / n
    assert error_rate(first_k_right(k), x, y, batch_size=batch_size) == pytest.approx(0.3)


@pytest.mark.parametrize(
    "x, y, kwargs, match",
    [
        (torch.zeros(3, 2), torch.tensor([0, 1]), {}, "3 rows but y has 2"),
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), {}, "N = 0"),
        (torch.zeros(2, 2), torch.tensor([0.0, 1.0]), {}, "integer tensor"),
        (torch.zeros(2, 2), torch.tensor([0, 5]), dict(num_classes=3), r"0\.\.2"),
        (torch.zeros(2, 2), torch.tensor([0, 1]), dict(batch_size=0), "batch_size"),
    ],
)
def test_accuracy_rejects_bad_input(x, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        accuracy(lambda xb: torch.zeros(len(xb), dtype=torch.long), x, y, **kwargs)


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_validation_callback_selects_best_checkpoint(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(60, 20, generator=gen) < 0.4).float()
    y = torch.arange(60) % 3
    m2 = M2(data_dim=20, num_classes=3, latent_dim=2, hidden_sizes=[8], alpha=30.0)
    history = pyrovae.fit(
        m2, {"unlabelled": (x[:40],), "labelled": (x[40:49], y[40:49])}, objective="enum",
        epochs=4, batch_size=16, lr=3e-2, callbacks=[validation_callback(x[49:], y[49:])],
        select_metric="val_accuracy", checkpoint_dir=tmp_path,
    )
    values = history.column("val_accuracy")
    assert all(v * 11 == pytest.approx(round(v * 11)) for v in values)  # k/11 examples
    assert history.best["val_accuracy"] == max(values)
    best = pyrovae.load_checkpoint(history.best_checkpoint)
    assert accuracy(best.classify, x[49:], y[49:]) == history.best["val_accuracy"]
