"""Burda et al.'s learning-rate schedule (full and compressed), Adam, and the held-out bound."""

import math

import pytest
import torch

from pyrovae import fit
from pyrovae.infer import BurdaSchedule, burda_adam, held_out_bound_callback
from pyrovae.models import VAE


def _paper_factor(epoch: int) -> float:
    """The paper's rule written directly: stage i covers epochs [sum_{j<i} 3^j, sum_{j<=i} 3^j)."""
    i = 0
    while epoch >= (3 ** (i + 1) - 1) // 2:
        i += 1
    return 10.0 ** (-i / 7)


def test_full_schedule_is_the_papers_epoch_for_epoch():
    schedule = BurdaSchedule()
    assert schedule.stage_lengths == [3**i for i in range(8)]
    assert [schedule(e) for e in range(3280)] == [_paper_factor(e) for e in range(3280)]
    assert schedule(5000) == 10.0 ** (-1)  # past the end: the last stage


@pytest.mark.parametrize("epochs, lengths", [
    (8, [1] * 8),
    (9, [1, 1, 1, 1, 1, 1, 2, 1]),
    (300, [1, 1, 1, 2, 7, 22, 67, 199]),
    (1000, [1, 1, 3, 8, 25, 74, 222, 666]),
])
def test_compressed_schedule_keeps_every_stage_and_its_share(epochs, lengths):
    """Stage i lasts max(1, round(3^i E / 3280)) epochs, the last the rest; epoch e's factor is
    10^(-i/7) for the stage i that contains it."""
    schedule = BurdaSchedule(epochs)
    assert schedule.stage_lengths == lengths
    assert sum(lengths) == epochs
    stages = [i for i, n in enumerate(lengths) for _ in range(n)]
    assert [schedule(e) for e in range(epochs)] == [10.0 ** (-i / 7) for i in stages]


@pytest.mark.parametrize("epochs, lengths", [
    (8, [1] * 8),
    (13, [2, 2, 2, 2, 2, 1, 1, 1]),
    (400, [50] * 8),
])
def test_even_stages_keep_the_rates_and_share_the_epochs(epochs, lengths):
    schedule = BurdaSchedule(epochs, stages="even")
    assert schedule.stage_lengths == lengths
    stages = [i for i, n in enumerate(lengths) for _ in range(n)]
    assert [schedule(e) for e in range(epochs)] == [10.0 ** (-i / 7) for i in stages]
    assert schedule(epochs + 100) == 10.0 ** (-1)  # past the end: the last stage
    # The repr is what a resumed run compares: the paper's shares keep the old one.
    assert repr(schedule) == f"BurdaSchedule(epochs={epochs}, stages='even')"
    assert repr(BurdaSchedule(epochs)) == f"BurdaSchedule(epochs={epochs})"


def test_fit_uses_the_schedule_per_epoch_and_resumes_only_with_the_same_one(tmp_path):
    x = torch.bernoulli(torch.full((40, 6), 0.4))
    history = fit(VAE(6, 2, (5,)), x, epochs=4, batch_size=20, lr=1e-3,
                  lr_schedule=BurdaSchedule(10), optimizer=burda_adam, checkpoint_dir=tmp_path)
    history = fit(VAE(6, 2, (5,)), x, epochs=10, batch_size=20, lr=1e-3,
                  lr_schedule=BurdaSchedule(10), optimizer=burda_adam, checkpoint_dir=tmp_path,
                  resume=True)
    stages = [0, 1, 2, 3, 4, 5, 6, 6, 7, 7]  # lengths [1, 1, 1, 1, 1, 1, 2, 2]
    assert history.column("lr") == pytest.approx([1e-3 * 10 ** (-i / 7) for i in stages],
                                                 rel=1e-12)
    with pytest.raises(ValueError, match="lr_schedule"):
        fit(VAE(6, 2, (5,)), x, epochs=12, batch_size=20, lr_schedule=BurdaSchedule(12),
            optimizer=burda_adam, checkpoint_dir=tmp_path, resume=True)


def test_burda_adam_and_bad_schedules():
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = burda_adam([param], 1e-3)
    assert optimizer.defaults["eps"] == 1e-4 and optimizer.defaults["lr"] == 1e-3
    for bad in (7, 0, 8.0, True):
        with pytest.raises(ValueError, match="epochs"):
            BurdaSchedule(bad)
    with pytest.raises(ValueError, match="epoch"):
        BurdaSchedule(10).stage(-1)
    with pytest.raises(ValueError, match="stages"):
        BurdaSchedule(10, stages="linear")


def test_held_out_bound_selects_the_best_epoch(tmp_path):
    x = torch.bernoulli(torch.full((60, 6), 0.3))
    held_out = torch.bernoulli(torch.full((20, 6), 0.3))
    history = fit(VAE(6, 2, (5,)), x, epochs=3, batch_size=20,
                  callbacks=[held_out_bound_callback(held_out, num_samples=10)],
                  select_metric="val_bound_k10", checkpoint_dir=tmp_path)
    bounds = history.column("val_bound_k10")
    assert all(math.isfinite(b) and b < 0 for b in bounds)
    assert history.best["val_bound_k10"] == max(bounds)
    assert (tmp_path / "best.pt").exists()
