"""The KL-weight schedule: one callback for both shapes the sequence models were trained with."""

import pytest
import torch

from pyrovae.infer import KLAnnealing
from pyrovae.infer.callbacks import EpochEnd, History


class KLWeighted(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.register_buffer("kl_weight", torch.tensor(float(weight)))


def epoch_end(module, epoch, step):
    return EpochEnd(epoch=epoch, step=step, loss=0.0, module=module, history=History())


def sketch_rnn_weight(kl_weight, eta_min, rate, step):
    """The schedule SketchRNN's runs were trained with (the former ``sketch_rnn.kl_annealing``,
    Ha & Eck 2018), written as it was."""
    return kl_weight * (1.0 - (1.0 - eta_min) * rate**step)


def smiles_weight(epochs, start, epoch):
    """The schedule the SMILES VAE's runs were trained with (the former
    ``smiles_vae.KLAnnealing``), written as it was."""
    return min(1.0, start + (1.0 - start) * (epoch + 1) / epochs)


@pytest.mark.parametrize("kl_weight, eta_min, rate", [(1.0, 0.01, 0.99995), (2.0, 0.1, 0.5),
                                                      (0.7, 0.2, 0.999)])
def test_exponential_shape_reproduces_the_sketch_rnn_schedule_exactly(kl_weight, eta_min, rate):
    schedule = KLAnnealing(eta_min, rate=rate, weight=kl_weight)
    module = KLWeighted(kl_weight * eta_min)
    for epoch, step in enumerate([0, 1, 3, 17, 250, 4000, 10**5, 10**6]):
        row = schedule(epoch_end(module, epoch, step))
        expected = sketch_rnn_weight(kl_weight, eta_min, rate, step)
        assert row == {"kl_weight_next": expected}  # bit for bit: same expression, same order
        assert float(module.kl_weight) == pytest.approx(expected, rel=1e-7)  # float32 buffer


@pytest.mark.parametrize("epochs, start", [(8, 0.1), (4, 0.2), (3, 1.0), (7, 0.3)])
def test_linear_shape_reproduces_the_smiles_schedule_exactly(epochs, start):
    schedule = KLAnnealing(start, epochs=epochs)
    module = KLWeighted(start)
    weights = []
    for epoch in range(epochs + 3):
        row = schedule(epoch_end(module, epoch, step=123 * epoch))
        assert row == {"kl_weight_next": smiles_weight(epochs, start, epoch)}
        weights.append(row["kl_weight_next"])
    assert weights[epochs - 1:] == [1.0] * 4  # reaches the ELBO after `epochs` epochs, stays
    assert weights == sorted(weights)


def test_linear_shape_scales_by_the_final_weight():
    schedule = KLAnnealing(0.25, epochs=3, weight=2.0)
    module = KLWeighted(0.5)
    got = [schedule(epoch_end(module, e, 0))["kl_weight_next"] for e in range(4)]
    assert got == pytest.approx([1.0, 1.5, 2.0, 2.0], rel=1e-12)
    assert float(module.kl_weight) == 2.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(start=0.1), "exactly one"),
    (dict(start=0.1, epochs=3, rate=0.9), "exactly one"),
    (dict(start=0.0, epochs=3), "start"),
    (dict(start=1.5, rate=0.9), "start"),
    (dict(start=0.1, epochs=0), "epochs"),
    (dict(start=0.1, epochs=2.5), "epochs"),
    (dict(start=0.1, rate=0.0), "rate"),
    (dict(start=0.1, rate=1.1), "rate"),
    (dict(start=0.1, rate=0.9, weight=0.0), "weight"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KLAnnealing(**kwargs)
