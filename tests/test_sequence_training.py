"""Training devices of the sequence VAEs: clipping on the mean loss, posterior-collapse watch."""

import pytest
import torch

from pyrovae.infer.clipping import MeanLossAdam


def test_mean_loss_adam_clips_the_mean_loss_gradient():
    # A loss summed over N = 1000 examples against the same loss averaged: MeanLossAdam on the
    # sum must take exactly the step Adam takes on the mean with each gradient value clipped.
    torch.manual_seed(0)
    data = torch.randn(1000, 3) * 5
    start = torch.randn(3)

    def mean_loss(p):
        return ((data - p) ** 2).sum(-1).mean()

    summed = start.clone().requires_grad_()
    reference = start.clone().requires_grad_()
    ours = MeanLossAdam([summed], lr=0.1, loss_scale=1000, clip_value=1.0)
    adam = torch.optim.Adam([reference], lr=0.1)
    clipped_any = False
    for _ in range(5):
        ours.zero_grad()
        (1000 * mean_loss(summed)).backward()
        ours.step()
        adam.zero_grad()
        mean_loss(reference).backward()
        clipped_any |= bool((reference.grad.abs() > 1).any())
        reference.grad.clamp_(-1, 1)
        adam.step()
    assert clipped_any  # the comparison exercised the clip
    torch.testing.assert_close(summed, reference, rtol=1e-6, atol=1e-6)


def test_mean_loss_adam_factory_has_a_stable_name_and_checks_arguments():
    a = MeanLossAdam.factory(7400 * 250, 1.0)
    b = MeanLossAdam.factory(7400 * 250, 1.0)
    assert repr(a) == repr(b) == "MeanLossAdam(loss_scale=1850000.0, clip_value=1.0)"
    optimizer = a([torch.zeros(2, requires_grad=True)], 0.5)
    assert isinstance(optimizer, MeanLossAdam) and optimizer.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="loss_scale"):
        MeanLossAdam([torch.zeros(1, requires_grad=True)], loss_scale=0)
    with pytest.raises(ValueError, match="clip_value"):
        MeanLossAdam([torch.zeros(1, requires_grad=True)], clip_value=-1)


def test_latent_statistics_count_active_units_and_the_kl():
    from pyrovae.infer.collapse import latent_statistics

    generator = torch.Generator().manual_seed(0)
    loc = torch.zeros(500, 4)
    loc[:, 0] = torch.randn(500, generator=generator)  # variance ~1: active
    loc[:, 1] = 0.01 * torch.randn(500, generator=generator)  # variance ~1e-4: inactive
    scale = torch.full((500, 4), 0.5)
    stats = latent_statistics(loc, scale)
    assert stats["active_units"] == 1 and stats["latent_dim"] == 4
    # closed form: 0.5 * sum_d (loc^2 + 0.25 - 1 - 2 log 0.5), averaged over the rows
    expected = 0.5 * (loc.square().sum(-1) + 4 * (0.25 - 1 - 2 * torch.log(torch.tensor(0.5))))
    assert stats["kl_per_example"] == pytest.approx(float(expected.mean()), rel=1e-6)


def test_collapse_monitor_warns_only_when_the_code_has_collapsed(caplog):
    from types import SimpleNamespace

    from pyrovae.infer.collapse import CollapseMonitor

    module = torch.nn.Linear(1, 1)
    generator = torch.Generator().manual_seed(0)
    informative = (3 * torch.randn(100, 8, generator=generator), torch.full((100, 8), 0.1))
    collapsed = (torch.zeros(100, 8), torch.ones(100, 8))
    info = SimpleNamespace(module=module, epoch=3)
    with caplog.at_level("WARNING", logger="pyrovae.infer.collapse"):
        row = CollapseMonitor(lambda m: informative)(info)
        assert not row["collapsed"] and row["active_units"] == 8
        assert not caplog.records
        row = CollapseMonitor(lambda m: collapsed)(info)
    assert row == {"kl_per_example": 0.0, "active_units": 0, "collapsed": True}
    assert len(caplog.records) == 1 and "posterior collapse after epoch 3" in caplog.text
    assert module.training  # the module's mode is restored


def test_capped_kl_schedule_rises_linearly_to_the_cap():
    """The SMILES script's capped ramp is the one KLAnnealing with weight = the cap."""
    from types import SimpleNamespace

    from pyrovae.infer import KLAnnealing

    module = SimpleNamespace(kl_weight=torch.tensor(0.01))
    schedule = KLAnnealing(0.01 / 0.05, epochs=4, weight=0.05)
    weights = [schedule(SimpleNamespace(module=module, epoch=e))["kl_weight_next"]
               for e in range(6)]
    assert weights == pytest.approx([0.02, 0.03, 0.04, 0.05, 0.05, 0.05])
    assert float(module.kl_weight) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        KLAnnealing(0.1 / 0.05, epochs=4, weight=0.05)  # a start above the cap
