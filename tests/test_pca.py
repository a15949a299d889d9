"""PCA by SVD and by alternating minimisation, and PPCA's zero-noise limit."""

import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA as SklearnPCA

from pyrovae.models.pca import (
    pca_alternating,
    pca_reconstruct,
    pca_svd,
    subspace_angle_degrees,
)
from pyrovae.models.ppca import PPCAParams, fit_closed_form, posterior, zero_noise_posterior_mean


@pytest.fixture(scope="module")
def x():
    return torch.tensor(load_digits().data / 16.0)


def test_svd_matches_sklearn(x):
    ours = pca_svd(x, 5)
    sk = SklearnPCA(n_components=5, svd_solver="full").fit(x.numpy())
    # Components agree up to sign; float64 SVDs of the same matrix agree to ~1e-10.
    signs = torch.sign((ours.components * torch.tensor(sk.components_)).sum(1, keepdim=True))
    torch.testing.assert_close(
        ours.components * signs, torch.tensor(sk.components_), atol=1e-8, rtol=0
    )
    n = x.shape[0]
    torch.testing.assert_close(
        ours.explained_variance * n / (n - 1), torch.tensor(sk.explained_variance_)
    )


def test_alternating_minimisation_finds_the_principal_subspace(x):
    svd, alt = pca_svd(x, 5), pca_alternating(x, 5, num_iters=500)
    # Subspace iteration converges geometrically (eigengap lambda_6/lambda_5 = 0.84 on digits);
    # 500 sweeps reach machine precision, so 1e-4 degrees leaves ample margin.
    assert subspace_angle_degrees(svd.components.T, alt.components.T) < 1e-4
    torch.testing.assert_close(alt.explained_variance, svd.explained_variance, rtol=1e-8, atol=0)
    torch.testing.assert_close(pca_reconstruct(x, alt), pca_reconstruct(x, svd), rtol=0, atol=1e-8)


def test_ppca_ml_spans_the_pca_subspace(x):
    ml = fit_closed_form(x, 5)
    assert subspace_angle_degrees(ml.W, pca_svd(x, 5).components.T) < 1e-6


def test_zero_noise_posterior_mean_is_the_pca_projection(x):
    ml = fit_closed_form(x, 5)
    pca = pca_svd(x, 5)
    # As sigma2 -> 0, M^-1 W^T -> (W^T W)^-1 W^T: the posterior mean becomes the least-squares
    # coordinates, and W times them is PCA's orthogonal projection.
    limit = zero_noise_posterior_mean(x, ml)
    for sigma2, tol in [(1e-6, 1e-5), (1e-9, 1e-8)]:
        mean, cov = posterior(x, PPCAParams(ml.W, ml.mu, torch.tensor(sigma2, dtype=x.dtype)))
        # |mean - limit| = O(sigma2 / lambda_K) relative, lambda_K ~ 0.1 here.
        assert (mean - limit).abs().max() < tol * 100
        assert cov.abs().max() < sigma2 * 100
    torch.testing.assert_close(ml.mu + limit @ ml.W.T, pca_reconstruct(x, pca), rtol=0, atol=1e-9)


@pytest.mark.parametrize("k", [0, 100])
def test_bad_latent_dim(x, k):
    with pytest.raises(ValueError, match="latent_dim"):
        pca_svd(x, k)
