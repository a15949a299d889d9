"""Classical PCA, two ways: by SVD, and by the alternating minimisation of the squared error.

Both find the K-dimensional subspace that minimises ``sum_n ||x_n - W z_n - mu||^2``. PPCA's
maximum-likelihood ``W`` spans the same subspace, and as ``sigma2 -> 0`` its posterior mean becomes
the PCA projection ([`pyrovae.models.ppca.zero_noise_posterior_mean`][]).
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
    x: torch.Tensor, latent_dim: int, num_iters: int = 1000, seed: int = 0, tol: float = 1e-12
) -> PCAResult:
    """PCA by alternating minimisation: ``Z = X W`` (project), then ``W = X^T Z (Z^T Z)^{-1}``.

    Each sweep is one step of subspace iteration with ``X^T X``, so ``W`` converges to the
    principal subspace at a rate set by the eigengap ``lambda_{K+1} / lambda_K``. ``W`` is
    re-orthonormalised (QR) after each sweep so that the projection step ``Z = X W`` is an
    orthogonal projection. The result is rotated into the principal axes at the end.

    Args:
        x: data [N, D].
        latent_dim: K.
        num_iters: maximum number of sweeps (default 1000).
        seed: seed of the random initial ``W`` (default 0).
        tol: stop when the subspace moves by less than ``tol``: the sine of the largest angle
            between consecutive iterates (default 1e-12). (The squared error is a poor stopping
            rule: it is quadratic in the angle, so it settles long before the subspace does.)
    """
    centred, mean = _centre(x, latent_dim)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    W = torch.randn(x.shape[1], latent_dim, generator=gen, device=x.device, dtype=x.dtype)
    W, _ = torch.linalg.qr(W)
    for _ in range(num_iters):
        Z = centred @ W
        W_next, _ = torch.linalg.qr(torch.linalg.solve(Z.T @ Z, Z.T @ centred).T)
        moved = torch.linalg.matrix_norm(W_next - W @ (W.T @ W_next), ord=2)
        W = W_next
        if moved <= tol:
            break
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
    # sin(largest angle) = ||(I - Qa Qa^T) Qb||_2: accurate for small angles, unlike arccos.
    sine = torch.linalg.matrix_norm(qb - qa @ (qa.T @ qb), ord=2).clamp(max=1.0)
    return float(torch.rad2deg(torch.arcsin(sine)))
