"""PPCA against its exact twin: closed-form ML, marginal likelihood, posterior and ELBO."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA as SklearnPCA

from pyrovae import fit
from pyrovae.models.pca import subspace_angle_degrees
from pyrovae.models.ppca import (
    PPCA,
    PPCAParams,
    elbo_closed_form,
    fit_closed_form,
    log_marginal,
    marginal_covariance,
    posterior,
)


def synthetic(n=1000, d=10, k=2, sigma2=0.3, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(d, k, generator=gen, dtype=dtype) * 2
    mu = torch.randn(d, generator=gen, dtype=dtype)
    z = torch.randn(n, k, generator=gen, dtype=dtype)
    x = z @ W.T + mu + sigma2**0.5 * torch.randn(n, d, generator=gen, dtype=dtype)
    return x, PPCAParams(W, mu, torch.tensor(sigma2, dtype=dtype))


def digits():
    return torch.tensor(load_digits().data / 16.0)


def test_log_marginal_equals_multivariate_normal():
    x, true = synthetic()
    direct = dist.MultivariateNormal(true.mu, marginal_covariance(true)).log_prob(x)
    # Both are float64 evaluations of the same density: only rounding separates them.
    torch.testing.assert_close(log_marginal(x, true), direct, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_closed_form_matches_sklearn_score(k):
    x = digits()
    n = x.shape[0]
    ml = fit_closed_form(x, k)
    ours = log_marginal(x, ml).sum().item()
    sk = SklearnPCA(n_components=k).fit(x.numpy())
    theirs = sk.score(x.numpy()) * n
    # scikit-learn's variances divide by N-1, ours by N (the ML estimate): its covariance is
    # c = N/(N-1) times ours. Since tr(C^-1 S) = D at the ML point, the two log-likelihoods
    # differ by exactly N D/2 (log c + 1/c - 1) ~ D/(4N) nats (0.009 nats on digits, out of
    # ~7e3: 1.3e-6 relative at K=1, so "equal to 1e-6" holds only up to this known term).
    c = n / (n - 1)
    gap = n * x.shape[1] / 2 * (math.log(c) + 1 / c - 1)
    assert ours - theirs == pytest.approx(gap, rel=1e-6)
    # Rescaled to scikit-learn's convention, ours equals its score to 1e-6 relative (to rounding).
    scaled = PPCAParams(ml.W * math.sqrt(c), ml.mu, ml.sigma2 * c)
    assert log_marginal(x, scaled).sum().item() == pytest.approx(theirs, rel=1e-9)
    # At scikit-learn's own parameters our density and theirs agree to rounding.
    W = torch.tensor(sk.components_.T * np.sqrt(sk.explained_variance_ - sk.noise_variance_))
    theirs = PPCAParams(W, torch.tensor(sk.mean_), torch.tensor(sk.noise_variance_))
    assert log_marginal(x, theirs).sum().item() == pytest.approx(sk.score(x.numpy()) * n, rel=1e-10)


def test_closed_form_is_a_maximum():
    x, _ = synthetic()
    ml = fit_closed_form(x, 2)
    best = log_marginal(x, ml).sum()
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        W = ml.W + 0.05 * torch.randn(ml.W.shape, generator=gen, dtype=x.dtype)
        s2 = ml.sigma2 * math.exp(0.1 * float(torch.randn(1, generator=gen)))
        assert log_marginal(x, PPCAParams(W, ml.mu, s2)).sum() < best


def test_posterior_is_bayes_rule():
    x, true = synthetic(n=5)
    mean, cov = posterior(x, true)
    # Joint Gaussian conditioning, written independently:
    # z | x ~ N(W^T C^-1 (x - mu), I - W^T C^-1 W).
    C = marginal_covariance(true)
    W = true.W
    torch.testing.assert_close(mean, (W.T @ torch.linalg.solve(C, (x - true.mu).T)).T)
    torch.testing.assert_close(cov, torch.eye(2, dtype=x.dtype) - W.T @ torch.linalg.solve(C, W))


def test_elbo_below_log_marginal_and_equal_at_posterior():
    x, true = synthetic(n=200)
    exact = log_marginal(x, true)
    mean, cov = posterior(x, true)
    # Analytic KL and analytic expected log-likelihood: equality is exact up to float64 rounding.
    torch.testing.assert_close(elbo_closed_form(x, true, mean, cov), exact, rtol=1e-10, atol=1e-8)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        m = mean + 0.3 * torch.randn(mean.shape, generator=gen, dtype=x.dtype)
        A = torch.randn(2, 2, generator=gen, dtype=x.dtype)
        c = A @ A.T + 0.01 * torch.eye(2, dtype=x.dtype)
        gap = exact - elbo_closed_form(x, true, m, c)
        assert (gap > 0).all()  # the gap is KL(q || p(z|x)) > 0 for q != posterior


def test_monte_carlo_elbo_with_exact_posterior_guide_has_zero_variance():
    x, _ = synthetic(n=300)
    ppca = PPCA(10, 2).double()
    with torch.no_grad():
        ml = fit_closed_form(x, 2)
        ppca.W, ppca.mu, ppca.sigma2 = ml.W, ml.mu, ml.sigma2
    ppca.set_guide_to_posterior()
    exact = log_marginal(x, ml).sum()
    # log p(x, z) - log q(z | x) = log p(x) for *every* z when q is the exact posterior, so a
    # single-sample Trace_ELBO equals log p(x) up to float64 rounding (relative 1e-10), not to
    # Monte-Carlo error.
    for seed in range(3):
        pyro.set_rng_seed(seed)
        loss = pyro.infer.Trace_ELBO().differentiable_loss(ppca.model, ppca.guide, x)
        assert (-loss).item() == pytest.approx(exact.item(), rel=1e-10)


def test_monte_carlo_elbo_matches_closed_form_for_any_guide():
    x, _ = synthetic(n=300)
    ppca = PPCA(10, 2).double()
    params = ppca.params()
    mean, cov = ppca.guide_posterior(x)
    exact = elbo_closed_form(x, params, mean, cov).sum()
    assert exact < log_marginal(x, params).sum()
    elbo = pyro.infer.Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)
    draws = torch.stack([-elbo.differentiable_loss(ppca.model, ppca.guide, x) for _ in range(5)])
    # Five independent 2000-particle estimates: their mean must lie within 4 standard errors
    # (estimated from the five) of the closed form; with seed 0 fixed this is deterministic.
    stderr = draws.std() / math.sqrt(len(draws))
    assert abs(draws.mean() - exact) < 4 * stderr + 1e-9 * abs(exact)


def _svi_fit(x, k, epochs, lr=0.05):
    ppca = PPCA(x.shape[1], k)
    fit(
        ppca,
        x,
        objective="meanfield",
        lr=lr,
        epochs=epochs,
        batch_size=x.shape[0],
        lr_schedule="cosine",
        seed=0,
    )
    return ppca


@pytest.mark.parametrize(
    "name, epochs",
    [("synthetic", 800), ("digits", 600)],
)
def test_svi_recovers_maximum_likelihood(name, epochs):
    if name == "synthetic":
        x64, _ = synthetic(n=2000, d=10, k=2)
        k = 2
    else:
        x64, k = digits(), 5
    x = x64.float()
    ppca = _svi_fit(x, k, epochs)
    learned = PPCAParams(*(t.double() for t in ppca.params()))
    ml = fit_closed_form(x64, k)
    exact, svi = log_marginal(x64, ml).sum(), log_marginal(x64, learned).sum()
    # Tolerances from the issue. Full-batch SVI with an exact-capable guide and a cosine-decayed
    # step reaches ~5e-5 relative / 0.05 % / 0.7 deg here (seed 0), so these are not tuned to pass.
    assert svi <= exact + 1e-6 * abs(exact)
    assert abs(svi - exact) / abs(exact) < 1e-3
    assert learned.sigma2.item() == pytest.approx(ml.sigma2.item(), rel=0.02)
    assert subspace_angle_degrees(learned.W, ml.W) < 2.0
    # The learned guide against the exact posterior of the learned parameters.
    g_mean, g_cov = ppca.guide_posterior(x)
    p_mean, p_cov = posterior(x, ppca.params())
    # 5% of the posterior's own spread: the guide's residual error after training is ~1-2%.
    assert (g_mean - p_mean).norm() / p_mean.norm() < 0.05
    assert (g_cov - p_cov).norm() / p_cov.norm() < 0.05


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(10, 4, dtype=torch.long), "floating"),
        (torch.zeros(10), "2-D"),
        (torch.zeros(0, 4), "empty"),
        (torch.tensor([[0.0, float("nan"), 1.0], [1.0, 2.0, 3.0]]), "NaN"),
        (torch.tensor([[0.0, float("inf"), 1.0], [1.0, 2.0, 3.0]]), "NaN or inf"),
    ],
)
def test_closed_form_rejects_bad_data(bad, message):
    with pytest.raises(ValueError, match=message):
        fit_closed_form(bad, 1)


@pytest.mark.parametrize("k", [0, -1, 4, 1.5])
def test_bad_latent_dim(k):
    with pytest.raises(ValueError, match="latent_dim"):
        fit_closed_form(torch.randn(20, 4), k)
    if k != 4:
        with pytest.raises(ValueError, match="latent_dim"):
            PPCA(4, k)


def test_model_rejects_wrong_width():
    with pytest.raises(ValueError, match=r"shape \[N, 4\]"):
        PPCA(4, 2).model(torch.randn(3, 5))
