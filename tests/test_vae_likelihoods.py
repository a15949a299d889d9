"""Each observation model's log-density against a hand computation on a tiny case."""

import math

import pytest
import torch

from pyrovae.models.likelihoods import (
    BernoulliLikelihood,
    GaussianLikelihood,
    LearnedGaussianLikelihood,
    make_likelihood,
)

# Float32 arithmetic on two pixels: agreement to 1e-5 is all we can ask.
TOL = 1e-5


def test_bernoulli_logits():
    out = torch.tensor([[0.0, math.log(3.0)]])  # p = 1/2 and 3/4
    x = torch.tensor([[1.0, 0.0]])
    # log(1/2) + log(1 - 3/4) = -log 8
    assert float(BernoulliLikelihood().distribution(out).log_prob(x)) == pytest.approx(
        -math.log(8.0), abs=TOL
    )
    assert torch.allclose(BernoulliLikelihood().mean(out), torch.tensor([[0.5, 0.75]]))


def test_bernoulli_at_grey_levels_when_allowed():
    # The cross-entropy at x = 1/2, p = 1/2: 2 * (1/2 log 1/2 + 1/2 log 1/2) = -2 log 2.
    like = BernoulliLikelihood(allow_continuous=True)
    value = like.distribution(torch.zeros(1, 2)).log_prob(torch.full((1, 2), 0.5))
    assert float(value) == pytest.approx(-2 * math.log(2.0), abs=TOL)
    with pytest.raises(ValueError, match="binary data"):
        BernoulliLikelihood().check(torch.full((1, 2), 0.5))


def test_gaussian_fixed_sigma():
    like = GaussianLikelihood(sigma=0.5)  # sigmoid(0) = 1/2 is the mean of both pixels
    x = torch.tensor([[0.5, 1.0]])
    hand = -2 * 0.5 * math.log(2 * math.pi * 0.25) - (0.0 + 0.25) / (2 * 0.25)
    assert float(like.distribution(torch.zeros(1, 2)).log_prob(x)) == pytest.approx(hand, abs=TOL)
    identity = GaussianLikelihood(sigma=0.5, mean_activation="identity")
    assert torch.equal(identity.mean(torch.tensor([[-3.0, 2.0]])), torch.tensor([[-3.0, 2.0]]))


def test_gaussian_learned_mean_and_log_variance():
    like = LearnedGaussianLikelihood(min_scale=0.01, mean_activation="identity")
    out = torch.tensor([[0.2, -0.4, 0.0, math.log(4.0)]])  # means, then raw log-variances
    x = torch.tensor([[1.2, 0.6]])
    lo = 2 * math.log(0.01)
    log_vars = [lo + math.log1p(math.exp(v - lo)) for v in (0.0, math.log(4.0))]
    hand = sum(
        -0.5 * math.log(2 * math.pi) - 0.5 * lv - (xi - m) ** 2 / (2 * math.exp(lv))
        for xi, m, lv in zip((1.2, 0.6), (0.2, -0.4), log_vars, strict=True)
    )
    assert float(like.distribution(out).log_prob(x)) == pytest.approx(hand, abs=TOL)
    assert like.num_heads == 2
    # The soft lower bound: a very negative raw log-variance stays near 2 log(min_scale).
    _, log_var = like.split(torch.tensor([[0.0, -50.0]]))
    assert float(log_var) == pytest.approx(lo, abs=1e-4)


def test_make_likelihood_by_name():
    assert isinstance(make_likelihood("bernoulli"), BernoulliLikelihood)
    assert make_likelihood("gaussian", sigma=0.2).sigma == 0.2
    with pytest.raises(ValueError, match="unknown likelihood"):
        make_likelihood("laplace")
    with pytest.raises(ValueError, match="mean_activation"):
        make_likelihood("gaussian", mean_activation="relu")
