"""Imputation, denoising and anomaly scores checked against closed forms (issue #15).

The exact twin is PPCA: ``x ~ N(mu, C)`` with ``C = W W^T + sigma2 I``, so the missing
coordinates given the observed ones are Gaussian,
``x_m | x_o ~ N(mu_m + C_mo C_oo^{-1} (x_o - mu_o), C_mm - C_mo C_oo^{-1} C_om)``.
Every sampler returns latent samples ``z_s`` with weights ``w_s``, i.e. the predictive mixture
``sum_s w_s N(W z_s + mu, sigma2 I)``; its mean and its covariance about the exact mean are
compared with the closed form.

Tolerance: every compared entry must lie within 4.5 Monte-Carlo standard errors of the exact
value. The standard errors are estimated from the run itself: for the chains, from the spread of
the per-chain averages over independent chains (so autocorrelation within a chain is accounted
for); for self-normalised importance sampling, by the delta method,
``se^2 = sum_s w_s^2 (f_s - f_hat)^2``. With about 40 entries per check, a correct sampler
exceeds 4.5 se somewhere with probability below 1e-3 (Gaussian tails), and the seeds are fixed,
so the outcome is deterministic; a sampler with the wrong target (e.g. pseudo-Gibbs with an
inexact guide, checked below) is caught because its bias is many standard errors.
"""

import json
import math
import os
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import REPO

from pyrovae.infer._conditioning import run_pass
from pyrovae.infer.anomaly import roc_auc
from pyrovae.infer.denoising import denoise
from pyrovae.infer.imputation import impute, missing_log_likelihood
from pyrovae.models.ppca import PPCA, marginal_covariance
from pyrovae.models.vae import VAE

D, K, N = 6, 2, 3
TOLERANCE = 4.5  # in Monte-Carlo standard errors (see the module docstring)


def make_ppca(exact_guide: bool = True) -> tuple[PPCA, torch.Tensor, torch.Tensor]:
    """A PPCA with fixed parameters, three images and a different mask for each."""
    gen = torch.Generator().manual_seed(0)
    model = PPCA(D, K)
    W = torch.randn(D, K, generator=gen)
    mu = 0.5 * torch.randn(D, generator=gen)
    model.W, model.mu, model.sigma2 = W, mu, torch.tensor(0.3)
    model.set_guide_to_posterior()
    if not exact_guide:  # a reasonable but inexact guide: shifted mean, wider covariance
        model.encoder_bias = model.encoder_bias.detach() + 0.1
        model.guide_scale_tril = 1.3 * model.guide_scale_tril.detach()
    x = torch.randn(N, K, generator=gen) @ W.T + mu + 0.55 * torch.randn(N, D, generator=gen)
    observed = torch.ones(N, D, dtype=torch.bool)
    observed[0, :3] = False
    observed[1, [3, 5]] = False
    observed[2, [1, 4]] = False
    return model, x, observed


def exact_conditional(model: PPCA, x: torch.Tensor, observed: torch.Tensor, i: int):
    """Mean and covariance of the missing coordinates of image i given its observed ones."""
    C = marginal_covariance(model.params())
    o, m = observed[i], ~observed[i]
    gain = C[m][:, o] @ torch.linalg.inv(C[o][:, o])
    mean = model.params().mu[m] + gain @ (x[i, o] - model.params().mu[o])
    return mean, C[m][:, m] - gain @ C[o][:, m]


def z_scores(model: PPCA, result, x, observed) -> torch.Tensor:
    """(estimate - exact) / se for the conditional mean and covariance of every image."""
    W, mu, sigma2 = model.params()
    comp = result.z @ W.T + mu  # [S, N, D]: mean of p(x | z_s)
    w = result.log_weights.exp()  # [S, N]
    scores = []
    for i in range(N):
        m = ~observed[i]
        exact_mean, exact_cov = exact_conditional(model, x, observed, i)
        f_mean = comp[:, i][:, m]  # [S, M]
        centred = f_mean - exact_mean
        f_cov = centred[:, :, None] * centred[:, None, :] + sigma2 * torch.eye(int(m.sum()))
        for f, exact in ((f_mean, exact_mean), (f_cov.flatten(1), exact_cov.flatten())):
            if result.num_chains > 1:  # per-chain averages of independent chains
                per_chain = f.view(-1, result.num_chains, f.shape[-1]).mean(0)
                est = per_chain.mean(0)
                se = per_chain.std(0) / math.sqrt(result.num_chains)
            else:  # self-normalised importance sampling: delta method
                wi = w[:, i, None]
                est = (wi * f).sum(0)
                se = ((wi**2) * (f - est) ** 2).sum(0).sqrt()
            scores.append((est - exact) / se)
    return torch.cat(scores)


CHAINS = dict(num_sweeps=60, burn_in=20, num_chains=300)


@pytest.mark.parametrize(
    "method, exact_guide, options",
    [
        ("pseudo_gibbs", True, CHAINS),  # exact only because the guide is the exact posterior
        ("metropolis_gibbs", True, CHAINS),
        ("metropolis_gibbs", False, CHAINS),
        # started from pseudo-Gibbs's (biased) law, the chain needs its own burn-in after it
        ("metropolis_gibbs", False, dict(CHAINS, num_sweeps=100, burn_in=60,
                                         pseudo_gibbs_warmup=10)),
        ("importance", True, dict(num_samples=20000, sample_chunk=5000)),
        ("importance", False, dict(num_samples=20000, sample_chunk=5000)),
    ],
)
def test_ppca_conditional_matches_closed_form(method, exact_guide, options):
    model, x, observed = make_ppca(exact_guide)
    pyro.set_rng_seed(1)
    result = impute(model, x, observed, method, **options)
    scores = z_scores(model, result, x, observed)
    assert scores.abs().max() < TOLERANCE, scores
    exact_means = [exact_conditional(model, x, observed, i)[0] for i in range(N)]
    for i in range(N):  # the imputed image: exact values where observed, estimate elsewhere
        assert torch.equal(result.mean[i][observed[i]], x[i][observed[i]])
        assert torch.allclose(result.mean[i][~observed[i]], exact_means[i], atol=0.1)


def test_pseudo_gibbs_with_inexact_guide_is_biased():
    """The check above has power: pseudo-Gibbs with the inexact guide misses by > 4.5 se."""
    model, x, observed = make_ppca(exact_guide=False)
    pyro.set_rng_seed(1)
    result = impute(model, x, observed, "pseudo_gibbs", **CHAINS)
    assert z_scores(model, result, x, observed).abs().max() > TOLERANCE


def test_masked_likelihood_is_the_sum_over_observed_pixels():
    vae = VAE(data_dim=12, latent_dim=3, hidden_sizes=[8])
    gen = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((5, 12), 0.5), generator=gen)
    observed = torch.rand(5, 12, generator=gen) > 0.4
    z = torch.randn(4, 5, 3, generator=gen)
    with torch.no_grad():
        p = run_pass(vae, x, num_particles=4, mask=observed, z=z, use_guide=False)
        explicit = (dist.Bernoulli(logits=vae.decoder(z)).log_prob(x) * observed).sum(-1)
        # the values at missing pixels do not enter the likelihood
        flipped = run_pass(vae, torch.where(observed, x, 1 - x), num_particles=4,
                           mask=observed, z=z, use_guide=False)
    assert torch.allclose(p.log_lik, explicit, atol=1e-5)
    assert torch.equal(flipped.log_lik, p.log_lik)
    assert torch.allclose(p.log_prior, dist.Normal(0.0, 1.0).log_prob(z).sum(-1), atol=1e-5)


@pytest.mark.parametrize("exact_guide", [True, False])
def test_ppca_evidence_and_missing_log_likelihood(exact_guide):
    """log p(x_obs) and log p(x_mis | x_obs) from importance imputation vs the Gaussians."""
    model, x, observed = make_ppca(exact_guide)
    pyro.set_rng_seed(2)
    result = impute(model, x, observed, "importance", num_samples=20000, sample_chunk=5000)
    log_lik_mis = missing_log_likelihood(model, result, x, sample_chunk=5000)
    C = marginal_covariance(model.params())
    mu = model.params().mu
    W, _, sigma2 = model.params()
    w = result.log_weights.exp()
    for i in range(N):
        o, m = observed[i], ~observed[i]
        exact_obs = dist.MultivariateNormal(mu[o], C[o][:, o]).log_prob(x[i, o])
        mean, cov = exact_conditional(model, x, observed, i)
        exact_mis = dist.MultivariateNormal(mean, cov).log_prob(x[i, m])
        # standard errors by the delta method (relative error of a mean of weights)
        wi = w[:, i]
        se_obs = math.sqrt(float((wi**2).sum()))  # >= sd(w) / (mean(w) sqrt(S)), conservative
        f = dist.Normal(result.z[:, i] @ W[m].T + mu[m], sigma2.sqrt()).log_prob(x[i, m])
        f = f.sum(-1).exp()
        est = (wi * f).sum()
        se_mis = float(((wi**2) * (f - est) ** 2).sum().sqrt() / est)
        assert abs(float(result.log_evidence[i] - exact_obs)) < TOLERANCE * se_obs + 1e-4
        assert abs(float(log_lik_mis[i] - exact_mis)) < TOLERANCE * se_mis + 1e-4


def test_ppca_denoising_matches_closed_form():
    """E[x | y] for y = x + N(0, t^2 I) under PPCA: mu + C (C + t^2 I)^{-1} (y - mu)."""
    model, x, _ = make_ppca(exact_guide=True)
    t, replicates = 0.5, 100
    gen = torch.Generator().manual_seed(3)
    y = x + t * torch.randn(x.shape, generator=gen)
    C = marginal_covariance(model.params())
    mu = model.params().mu
    exact = mu + (y - mu) @ torch.linalg.solve(C + t**2 * torch.eye(D), C)
    pyro.set_rng_seed(3)
    # independent replicate estimates of every image give the Monte-Carlo standard error
    out = denoise(model, y.repeat(replicates, 1), noise_scale=t, num_samples=1000,
                  sample_chunk=1000).mean.view(replicates, N, D)
    se = out.std(0) / math.sqrt(replicates)
    assert ((out.mean(0) - exact).abs() / se).max() < TOLERANCE


def test_salt_and_pepper_denoising_matches_quadrature():
    """A one-dimensional latent: E[x | y] by quadrature over z equals the importance estimate."""
    torch.manual_seed(0)
    vae = VAE(data_dim=5, latent_dim=1, hidden_sizes=[6])
    flip, replicates = 0.1, 100
    y = torch.tensor([[1.0, 0, 1, 1, 0], [0, 0, 1, 0, 0]])
    with torch.no_grad():
        grid = torch.linspace(-9, 9, 20001)[:, None]
        p = torch.sigmoid(vae.decoder(grid))  # [G, D]
        l1 = torch.where(y[:, None] > 0.5, 1 - flip, flip)  # P(y | x = 1): [N, G, D]
        joint1, joint0 = p * l1, (1 - p) * (1 - l1)  # P(x_d = 1, y_d | z), P(x_d = 0, y_d | z)
        log_py_z = (joint1 + joint0).log().sum(-1)  # [N, G]
        post = torch.softmax(log_py_z + dist.Normal(0.0, 1.0).log_prob(grid[:, 0]), -1)
        exact = (post[..., None] * joint1 / (joint1 + joint0)).sum(1)  # [N, D]
    pyro.set_rng_seed(4)
    out = denoise(vae, y.repeat(replicates, 1), flip_prob=flip, num_samples=500,
                  sample_chunk=500).mean.view(replicates, 2, 5)
    se = out.std(0) / math.sqrt(replicates)
    assert ((out.mean(0) - exact).abs() / se).max() < TOLERANCE


def test_roc_auc_known_cases():
    assert roc_auc([1.0, 2.0, 3.0], [2.0, 4.0]) == pytest.approx(4.5 / 6)  # one tie: 1/2
    assert roc_auc([0.0, 1.0], [2.0, 3.0]) == 1.0
    assert roc_auc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5
    from sklearn.metrics import roc_auc_score

    gen = torch.Generator().manual_seed(0)
    neg = torch.randint(0, 20, (300,), generator=gen).float()  # many ties
    pos = torch.randint(3, 25, (200,), generator=gen).float()
    labels = [0] * 300 + [1] * 200
    assert roc_auc(neg, pos) == pytest.approx(roc_auc_score(labels, torch.cat([neg, pos])))
    with pytest.raises(ValueError):
        roc_auc([], [1.0])


def run_module(module: str, args: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg",
               PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", module, *args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_experiments_run_end_to_end(tmp_path, mnist_root):
    """train_vae -> impute -> anomaly at tiny size (subprocesses), files and numbers written."""
    run_module("experiments.uses.train_vae", [
        "--train-size", "200", "--epochs", "1", "--hidden-sizes", "16", "--latent-dim", "3",
        "--out", str(tmp_path / "vae")])
    checkpoint = str(tmp_path / "vae" / "vae.pt")
    run_module("experiments.uses.impute", [
        "--checkpoint", checkpoint, "--num-images", "10", "--patterns", "top", "random80",
        "--num-sweeps", "4", "--num-samples", "12", "--num-fills", "2",
        "--classifier-train-size", "300", "--figure-rows", "2", "--out", str(tmp_path / "imp")])
    result = json.loads((tmp_path / "imp" / "impute.json").read_text())
    for pattern in ("top", "random80"):
        methods = result["patterns"][pattern]["methods"]
        assert set(methods) == {"pseudo_gibbs", "metropolis_gibbs", "importance"}
        assert all(math.isfinite(m["missing_log_likelihood"]) for m in methods.values())
        assert (tmp_path / "imp" / f"inpainting_{pattern}.png").stat().st_size > 0
    assert result["patterns"]["top"]["missing_fraction"] == 0.5
    run_module("experiments.uses.anomaly", [
        "--checkpoints", f"mnist={checkpoint}", f"fashion-mnist={checkpoint}",
        "--num-images", "10", "--num-samples", "5", "--out", str(tmp_path / "ood")])
    ood = json.loads((tmp_path / "ood" / "anomaly.json").read_text())
    auc = ood["models"]["mnist"]["auc"]["fashion-mnist"]
    # one model scoring both sets both ways: the two AUCs are complementary
    assert auc + ood["models"]["fashion-mnist"]["auc"]["mnist"] == pytest.approx(1.0)
    assert (tmp_path / "ood" / "ood_histograms.png").stat().st_size > 0


def test_denoise_experiment_end_to_end(tmp_path, mnist_root):
    """train_vae -> denoise at tiny size: the JSON's structure, and two properties that hold
    whatever the model. At e = 0 the posterior mean is the noisy (= clean) image exactly
    (``P(x_d = 1 | y_d, z)`` is ``y_d`` when nothing flips). At e = 0.2 the noisy images' pixel
    error rate is a binomial proportion over 30 x 784 = 23520 pixels: within 4.5 standard
    errors (sqrt(0.2 * 0.8 / 23520) = 0.0026) of 0.2 (the seed is fixed, so this is
    deterministic; a wrong flip rate, e.g. flipping with 2e or 1 - e, is far outside)."""
    run_module("experiments.uses.train_vae", [
        "--train-size", "200", "--epochs", "1", "--hidden-sizes", "16", "--latent-dim", "3",
        "--out", str(tmp_path / "vae")])
    run_module("experiments.uses.denoise", [
        "--checkpoint", str(tmp_path / "vae" / "vae.pt"), "--num-images", "30",
        "--flip-probs", "0", "0.2", "--num-samples", "20", "--figure-images", "3",
        "--out", str(tmp_path / "den")])
    result = json.loads((tmp_path / "den" / "denoise.json").read_text())
    assert result["num_images"] == 30
    assert set(result["flip_probs"]) == {"0", "0.2"}
    for row in result["flip_probs"].values():
        assert set(row) == {"noisy", "median_filter", "posterior_mean", "mean_log_evidence",
                            "log_evidence_stderr", "median_effective_sample_size", "seconds"}
        assert set(row["posterior_mean"]) == {"error", "error_stderr", "brier"}
        assert math.isfinite(row["mean_log_evidence"])
        assert 1.0 <= row["median_effective_sample_size"] <= 20.0
    exact = result["flip_probs"]["0"]
    assert exact["noisy"]["error"] == 0.0
    assert exact["posterior_mean"]["error"] == 0.0
    assert exact["posterior_mean"]["brier"] < 1e-8
    assert abs(result["flip_probs"]["0.2"]["noisy"]["error"] - 0.2) < 4.5 * math.sqrt(
        0.2 * 0.8 / (30 * 784))
    assert (tmp_path / "den" / "denoising.png").stat().st_size > 0


def test_median_filter_removes_isolated_flips_and_keeps_blocks():
    from experiments.uses.denoise import median_filter

    image = torch.zeros(1, 7, 7)
    image[0, 1, 1] = 1.0  # an isolated "salt" pixel: 1 of its 9 neighbours is on
    image[0, 3:6, 3:6] = 1.0  # a 3x3 block: its centre has 9 of 9 on, its corner 4 of 9
    filtered = median_filter(image.view(1, 49), (7, 7)).view(7, 7)
    assert filtered[1, 1] == 0.0
    assert filtered[4, 4] == 1.0
    assert filtered[3, 3] == 0.0  # a corner of the block sees 4 ones and 5 zeros
    assert filtered[4, 3] == 1.0  # an edge sees 6 ones


@pytest.mark.parametrize("method", ["pseudo_gibbs", "metropolis_gibbs", "importance"])
def test_missing_values_are_never_read(method):
    """The same seed gives the same imputation whatever the missing pixels hold (a VAE)."""
    vae = VAE(data_dim=10, latent_dim=2, hidden_sizes=[8])
    gen = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((4, 10), 0.5), generator=gen)
    observed = torch.rand(4, 10, generator=gen) > 0.5
    results = []
    for filled in (x, torch.where(observed, x, 1 - x)):
        pyro.set_rng_seed(5)
        results.append(impute(vae, filled, observed, method, num_samples=30, num_sweeps=6,
                              num_chains=2, sample_chunk=10, num_fills=2))
    assert torch.equal(results[0].z, results[1].z)
    assert torch.equal(results[0].mean[~observed], results[1].mean[~observed])
    with pytest.raises(ValueError, match="mask"):
        impute(vae, x, observed.float(), method)


@pytest.mark.slow
def test_nuts_matches_ppca_conditional():
    """NUTS on z (no guide) for one PPCA image: mean within 4.5 se (batch means, 10 batches)."""
    from pyrovae.infer.imputation import nuts_impute

    model, x, observed = make_ppca()
    pyro.set_rng_seed(6)
    result = nuts_impute(model, x[:1], observed[:1], num_samples=2000, warmup_steps=300)
    W, mu, _ = model.params()
    m = ~observed[0]
    comp = (result.z[:, 0] @ W.T + mu)[:, m]  # [S, M]
    batches = comp.view(10, -1, comp.shape[-1]).mean(1)
    se = batches.std(0) / math.sqrt(10)
    exact_mean, _ = exact_conditional(model, x, observed, 0)
    assert ((batches.mean(0) - exact_mean).abs() / se).max() < TOLERANCE


def test_make_mask_halves_and_random_fractions():
    """The halves are exact (rows < side // 2 missing for "top", the rest for "bottom", the
    same for every image); a random pattern misses each pixel with its probability, checked
    over 200 x 36 = 7200 pixels within 5 binomial standard errors (at most 0.03, so a wrong
    fraction such as 0.5 for "random80" cannot pass); seeded and reproducible."""
    from pyrovae.infer import make_mask
    from pyrovae.infer.imputation import PATTERNS

    assert PATTERNS == ("top", "bottom", "random50", "random80")
    top, bottom = make_mask("top", 3, side=6), make_mask("bottom", 3, side=6)
    assert top.shape == (3, 36) and top.dtype == torch.bool
    rows = torch.arange(36) // 6
    assert torch.equal(top, (rows >= 3).expand(3, 36)) and torch.equal(bottom, ~top)
    assert torch.equal(make_mask("top", 1, side=5)[0], torch.arange(25) // 5 >= 2)
    for pattern, fraction in [("random50", 0.5), ("random80", 0.8)]:
        mask = make_mask(pattern, 200, side=6, seed=3)
        assert mask.shape == (200, 36)
        missing = (~mask).double().mean().item()
        assert abs(missing - fraction) < 5 * math.sqrt(fraction * (1 - fraction) / mask.numel())
        assert torch.equal(mask, make_mask(pattern, 200, side=6, seed=3))
        assert not torch.equal(mask, make_mask(pattern, 200, side=6, seed=4))
    with pytest.raises(ValueError, match="unknown pattern 'left'"):
        make_mask("left", 2, side=4)
