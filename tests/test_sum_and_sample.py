"""Sum-and-sample (Liu et al. 2019): unbiased for the enumerated ELBO and its gradient."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import config_enumerate

from pyrovae import fit
from pyrovae.infer import make_objective
from pyrovae.infer.sum_and_sample import SumAndSampleELBO
from pyrovae.models import data_plate
from pyrovae.models.base import take
from pyrovae.models.m2 import M2

C = 6


class Mixture(torch.nn.Module):
    """``y ~ Cat(1/C)``, ``x | y ~ N(mu_y, 1)``; guide ``q(y) = Cat(logits)`` per data point.

    No continuous latent: the enumerated ELBO is a deterministic function of the parameters,
    so the exact value and gradient are known and only sum-and-sample's draw is random.
    """

    def __init__(self, n):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.mu = torch.nn.Parameter(torch.randn(C, generator=gen))
        self.logits = torch.nn.Parameter(0.7 * torch.randn(n, C, generator=gen))

    def model(self, x, subsample=None):
        with data_plate(x, subsample):
            y = pyro.sample("y", dist.Categorical(logits=x.new_zeros(C)))
            pyro.sample("x", dist.Normal(self.mu[y], 1.0), obs=take(x, subsample))

    @config_enumerate
    def guide(self, x, subsample=None):
        with data_plate(x, subsample):
            pyro.sample("y", dist.Categorical(logits=take(self.logits, subsample)))


def value_and_gradient(module, objective, *args):
    module.zero_grad(set_to_none=True)
    loss = objective.differentiable_loss(module.model, module.guide, *args)
    loss.backward()
    return float(loss.detach()), torch.cat([p.grad.flatten() for p in module.parameters()])


def draws(module, objective, num, *args):
    pairs = [value_and_gradient(module, objective, *args) for _ in range(num)]
    values, grads = [p[0] for p in pairs], [p[1] for p in pairs]
    return torch.tensor(values, dtype=torch.float64), torch.stack(grads).double()


def within(estimates, exact, num_se=4.0):
    """Whether every mean of ``estimates`` [S, ...] lies within ``num_se`` standard errors."""
    mean, se = estimates.mean(0), estimates.std(0) / estimates.shape[0] ** 0.5
    return bool(((mean - exact).abs() <= num_se * se + 1e-9).all()), mean, se


def test_topk_covering_every_class_is_the_exact_enumerated_elbo():
    x = torch.randn(8)
    module = Mixture(8)
    exact = value_and_gradient(module, make_objective("enum"), x)
    for k in (C, C + 2):
        value, grad = value_and_gradient(module, SumAndSampleELBO(topk=k), x)
        assert value == pytest.approx(exact[0], rel=1e-6)
        assert torch.allclose(grad, exact[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3])
def test_mean_of_estimates_is_the_exact_elbo_and_gradient(k):
    x = torch.randn(8)
    module = Mixture(8)
    exact_value, exact_grad = value_and_gradient(module, make_objective("enum"), x)
    pyro.set_rng_seed(11)
    values, grads = draws(module, SumAndSampleELBO(topk=k), 1000, x)
    assert values.std() > 0  # the remainder is sampled: the estimate is random
    # 4 standard errors of the measured estimator: a correct estimator falls outside with
    # probability 6e-5 per coordinate; the seed is fixed, so the outcome is too.
    ok, mean, se = within(values, exact_value)
    assert ok, (float(mean), exact_value, float(se))
    ok, grad_mean, grad_se = within(grads, exact_grad.double())
    assert ok, (grad_mean - exact_grad).abs().div(grad_se).max()
    # Top-k truncation without the sampled remainder is biased, by far more than 4 SE here:
    # the test above would catch it.
    assert abs(_truncated_elbo(module, x, k) - exact_value) > 4 * float(se)


def _truncated_elbo(module, x, k):
    """The biased estimate that keeps only the top-k classes' terms (no sampled remainder)."""
    log_q = torch.log_softmax(module.logits.detach(), -1)
    top = log_q.topk(k, -1)
    log_p = dist.Normal(module.mu.detach()[top.indices], 1.0).log_prob(x[:, None])
    terms = top.values.exp() * (log_p - torch.log(torch.tensor(float(C))) - top.values)
    return -float(terms.sum())


def small_m2():
    torch.manual_seed(0)
    return M2(data_dim=20, num_classes=C, latent_dim=2, hidden_sizes=(16,), alpha=5.0)


@pytest.mark.slow  # 1600 M2 steps: ~20 s
def test_m2_estimates_match_enumeration_in_expectation():
    x = torch.rand(8, 20, generator=torch.Generator().manual_seed(1)).round()
    model = small_m2()
    pyro.set_rng_seed(5)
    enum_values, enum_grads = draws(model, make_objective("enum"), 800, x)
    ss_values, ss_grads = draws(model, SumAndSampleELBO(topk=3), 800, x)
    # Both are noisy (z is sampled in both): compare their means with the standard error of
    # the difference, 4 SE (see above).
    se = (enum_values.var() / 800 + ss_values.var() / 800).sqrt()
    assert abs(float(enum_values.mean() - ss_values.mean())) <= 4 * float(se)
    classifier = slice(0, sum(p.numel() for p in model.classifier.parameters()))
    diff = enum_grads[:, classifier].mean(0) - ss_grads[:, classifier].mean(0)
    se_grad = (enum_grads[:, classifier].var(0) / 800 + ss_grads[:, classifier].var(0) / 800)
    assert bool((diff.abs() <= 4 * se_grad.sqrt() + 1e-9).all())


def test_m2_labelled_batches_are_the_plain_elbo():
    x = torch.rand(8, 20, generator=torch.Generator().manual_seed(1)).round()
    y = torch.arange(8) % C
    model = small_m2()
    pyro.set_rng_seed(2)
    enum = make_objective("enum").differentiable_loss(model.model, model.guide, x, y)
    pyro.set_rng_seed(2)
    ss = SumAndSampleELBO(topk=3).differentiable_loss(model.model, model.guide, x, y)
    assert float(ss.detach()) == pytest.approx(float(enum.detach()), rel=1e-6)


def test_fit_trains_m2_with_sum_and_sample(tmp_path):
    x = torch.rand(60, 20, generator=torch.Generator().manual_seed(1)).round()
    y = torch.arange(12) % C
    model = small_m2()
    history = fit(model, {"unlabelled": (x[12:],), "labelled": (x[:12], y)},
                  objective="sum_and_sample", epochs=3, batch_size=12, checkpoint_dir=tmp_path)
    assert len(history.epochs) == 3
    assert history.configs[0]["config"]["objective"] == "SumAndSampleELBO(topk=3)"


@pytest.mark.parametrize("kwargs, message", [
    (dict(topk=0), "topk must be a positive integer"),
    (dict(topk=2, jit=True), "runs eagerly"),
    (dict(topk=2, graph_safe=True), "runs eagerly"),
])
def test_bad_options_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_objective("sum_and_sample", **kwargs)
