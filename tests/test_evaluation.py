"""Evaluation against exact answers: PPCA's log-marginal and closed-form ELBO."""

import pyro
import pytest
import torch

from pyrovae.infer.evaluation import elbo_terms, evaluate, importance_nll
from pyrovae.models.ppca import PPCA, elbo_closed_form, log_marginal
from pyrovae.models.vae import VAE


def ppca_and_data(n=50, d=5, k=2, seed=0):
    """A PPCA with random W, mu, sigma2 = 1 and n draws from it (float64)."""
    torch.manual_seed(seed)
    ppca = PPCA(d, k, init_scale=1.0).double()
    with torch.no_grad():
        ppca.mu = torch.randn(d, dtype=torch.float64)
    W, mu, sigma2 = ppca.params()
    x = torch.randn(n, k, dtype=torch.float64) @ W.T + mu + sigma2.sqrt() * torch.randn(
        n, d, dtype=torch.float64
    )
    return ppca, x


def perturb_guide(ppca, seed=1):
    """The exact posterior, then its mean map and scale perturbed: a guide ~1 nat off."""
    ppca.set_guide_to_posterior()
    torch.manual_seed(seed)
    with torch.no_grad():
        weight = ppca.encoder_weight.detach()
        ppca.encoder_weight = weight + 0.2 * torch.randn_like(weight)
        ppca.guide_scale_tril = 1.3 * ppca.guide_scale_tril.detach()


def test_exact_guide_gives_the_exact_marginal_for_any_k():
    # With q = p(z|x) every importance weight equals p(x): the estimate is exact even at K = 1,
    # up to float64 rounding.
    ppca, x = ppca_and_data()
    ppca.set_guide_to_posterior()
    exact = log_marginal(x, ppca.params())
    for k in (1, 7):
        assert torch.allclose(importance_nll(ppca, x, num_samples=k), exact, atol=1e-8)
    terms = elbo_terms(ppca, x, num_samples=3)
    assert torch.allclose(terms.elbo, exact, atol=1e-8)


def test_elbo_terms_match_the_closed_form_elbo():
    # Monte Carlo over 2000 samples per point: the per-point errors are independent, so their
    # mean over the 50 points must lie within 4 of its standard errors of 0.
    ppca, x = ppca_and_data()
    perturb_guide(ppca)
    q_mean, q_cov = ppca.guide_posterior(x)
    exact = elbo_closed_form(x, ppca.params(), q_mean, q_cov)
    for analytic_kl in (False, True):
        mc = elbo_terms(ppca, x, num_samples=2000, batch_size=25, analytic_kl=analytic_kl)
        error = mc.elbo - exact
        assert abs(float(error.mean())) < 4 * float(error.std()) / len(error) ** 0.5 + 1e-9
        assert torch.allclose(mc.elbo, mc.reconstruction - mc.kl)


def test_importance_estimate_converges_to_the_exact_marginal():
    ppca, x = ppca_and_data()
    perturb_guide(ppca)
    exact = log_marginal(x, ppca.params())
    q_mean, q_cov = ppca.guide_posterior(x)
    elbo = elbo_closed_form(x, ppca.params(), q_mean, q_cov)
    gap_elbo = float((exact - elbo).mean())
    assert gap_elbo > 0.1  # the perturbed guide is visibly worse than the posterior
    gaps, stderrs = {}, {}
    for k in (10, 100, 5000):
        estimate = importance_nll(ppca, x, num_samples=k, sample_chunk=1000, batch_size=25)
        gap = exact - estimate
        gaps[k], stderrs[k] = float(gap.mean()), float(gap.std()) / len(gap) ** 0.5
        # Never below the ELBO beyond Monte-Carlo error (3 standard errors over the 50 points),
        # and never above log p(x) beyond it.
        assert float((estimate - elbo).mean()) > -3 * stderrs[k]
        assert gaps[k] > -3 * stderrs[k]
    # The IWAE bias falls roughly as 1/K (measured here: 2.2 nats at K=1, 0.5 at 10, 0.05 at
    # 100): it must shrink, and vanish at K = 5000 within 4 standard errors (~0.02 nats each).
    assert gap_elbo > gaps[10] > gaps[100]
    assert abs(gaps[5000]) < 4 * stderrs[5000]


def test_evaluate_reports_consistent_terms():
    vae = VAE(data_dim=16, latent_dim=2, hidden_sizes=[8])
    x = torch.bernoulli(torch.full((30, 16), 0.3))
    metrics = evaluate(vae, x, num_samples=50, elbo_samples=20, batch_size=10)
    assert metrics["nll"] == -metrics["log_likelihood"]
    assert metrics["elbo"] == pytest.approx(metrics["reconstruction"] - metrics["kl"], abs=1e-4)
    assert metrics["num_examples"] == 30 and metrics["num_importance_samples"] == 50
    # K = 50 importance samples bound log p(x) at least as tightly as the 20-sample ELBO does,
    # in expectation; 3 standard errors over the 30 images allow for Monte-Carlo noise.
    assert metrics["log_likelihood"] > metrics["elbo"] - 3 * metrics["nll_stderr"]
    assert "nll" not in evaluate(vae, x, num_samples=0)


def test_sample_chunk_is_sized_to_free_memory():
    from pyrovae.infer.evaluation import sample_chunk_for

    x = torch.zeros(1000, 784)
    assert sample_chunk_for(x, 5000, 100) == 100  # CPU: the fixed default
    # 4 GiB free, a quarter used, 16 float32 values of 784 per sample and row, rows of 100:
    assert sample_chunk_for(x, 5000, 100, free_bytes=4 * 2**30) == 2**30 // (16 * 784 * 4 * 100)
    assert sample_chunk_for(x, 50, 100, free_bytes=4 * 2**30) == 50  # never more than K
    assert sample_chunk_for(x, 5000, 100, free_bytes=1000) == 1  # at least one


def test_auto_chunk_gives_the_same_estimate():
    vae = VAE(data_dim=6, latent_dim=2, hidden_sizes=[5])
    x = (torch.rand(7, 6, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    pyro.set_rng_seed(3)
    fixed = importance_nll(vae, x, num_samples=40, sample_chunk=40)
    pyro.set_rng_seed(3)
    auto = importance_nll(vae, x, num_samples=40, sample_chunk="auto")
    assert torch.equal(fixed, auto)  # CPU: auto = min(100, K) = 40, the same draws
