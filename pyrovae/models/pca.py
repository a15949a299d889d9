"""Classical PCA, two ways: by SVD, and by the alternating minimisation of the squared error.

Both find the K-dimensional subspace that minimises ``sum_n ||x_n - W z_n - mu||^2``. PPCA's
maximum-likelihood ``W`` spans the same subspace, and as ``sigma2 -> 0`` its posterior mean becomes
the PCA projection (:func:`pyrovae.models.ppca.zero_noise_posterior_mean`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class PCAResult(NamedTuple):
    """``components`` [K, D] (orthonormal rows), ``mean`` [D], ``explained_variance`` [K]."""

    components: torch.Tensor
    mean: torch.Tensor
    explained_variance: torch.Tensor


def _centre(x: torch.Tensor, latent_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating [N, D] tensor, got {x.dtype} {list(x.shape)}")
    if not 1 <= latent_dim <= min(x.shape):
        raise ValueError(f"latent_dim must be in [1, {min(x.shape)}], got {latent_dim}")
    mean = x.mean(0)
    return x - mean, mean


def pca_svd(x: torch.Tensor, latent_dim: int) -> PCAResult:
    """PCA by the thin SVD of the centred data [N, D]; variances use the 1/N convention."""
    centred, mean = _centre(x, latent_dim)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    return PCAResult(vh[:latent_dim], mean, s[:latent_dim] ** 2 / x.shape[0])


def pca_alternating(
    x: torch.Tensor, latent_dim: int, num_iters: int = 200, seed: int = 0, tol: float = 1e-10
) -> PCAResult:
    """PCA by alternating minimisation: ``Z = X W`` (project), then ``W = X^T Z (Z^T Z)^{-1}``.

    Each sweep is one step of subspace iteration with ``X^T X``, so ``W`` converges to the
    principal subspace at a rate set by the eigengap ``lambda_{K+1} / lambda_K``. ``W`` is
    re-orthonormalised (QR) after each sweep so that the projection step ``Z = X W`` is an
    orthogonal projection. The result is rotated into the principal axes at the end.

    Args:
        x: data [N, D].
        latent_dim: K.
        num_iters: maximum number of sweeps (default 200).
        seed: seed of the random initial ``W`` (default 0).
        tol: stop when the squared error changes by less than ``tol`` relative (default 1e-10).
    """
    centred, mean = _centre(x, latent_dim)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    W = torch.randn(x.shape[1], latent_dim, generator=gen, device=x.device, dtype=x.dtype)
    W, _ = torch.linalg.qr(W)
    previous = None
    for _ in range(num_iters):
        Z = centred @ W
        W = torch.linalg.solve(Z.T @ Z, Z.T @ centred).T
        W, _ = torch.linalg.qr(W)
        error = ((centred - centred @ W @ W.T) ** 2).sum()
        if previous is not None and abs(previous - error) <= tol * previous:
            break
        previous = error
    # Rotate within the subspace so the columns are the principal axes (as from the SVD).
    Z = centred @ W
    evals, evecs = torch.linalg.eigh(Z.T @ Z / x.shape[0])
    order = evals.argsort(descending=True)
    components = (W @ evecs[:, order]).T
    return PCAResult(components, mean, evals[order])


def pca_reconstruct(x: torch.Tensor, pca: PCAResult) -> torch.Tensor:
    """Project ``x`` [N, D] onto the principal subspace: ``mean + (x - mean) V^T V``."""
    V = pca.components
    return pca.mean + (x - pca.mean) @ V.T @ V


def subspace_angle_degrees(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest principal angle, in degrees, between the column spans of ``a`` and ``b`` [D, K]."""
    qa, _ = torch.linalg.qr(a.double())
    qb, _ = torch.linalg.qr(b.double())
    cosines = torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0)
    return float(torch.rad2deg(torch.arccos(cosines.min())))
