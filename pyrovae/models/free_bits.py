"""Free bits: a floor under the KL term of a VAE's objective (Kingma et al. 2016).

The sequence VAEs ([`pyrovae.models.SketchRNN`][], [`pyrovae.models.SMILESVAE`][]) share one
form of it, SketchRNN's ``max(L_KL, KL_min)``: with a Gaussian guide ``q(z_n | x_n)``, a
standard-normal prior and a floor ``kappa`` in nats per example (the whole latent vector, not
per dimension), the guide adds the factor

    kl_floor = N * beta * relu(kappa - mean_n KL(q(z_n | x_n) || N(0, I)))

where the mean runs over the minibatch, ``beta`` is the model's ``kl_weight`` and ``N`` the size
of the data (the factor sits outside the data plate, so it is scaled by hand). ``Trace_ELBO``
subtracts a guide factor from the ELBO, so the loss per example becomes, in expectation over
``z``, ``recon + beta * max(mean KL, kappa)``: below the floor the KL is not pushed down.
``TraceMeanField_ELBO`` ignores factors in guides.

The factor is part of the training objective, not of the model: an ELBO evaluated with the
floor on is not an ELBO. Evaluate with ``kl_floor = 0`` or with the site hidden
(``poutine.block(guide, hide=["kl_floor"])``).

References:
    D. P. Kingma, T. Salimans, R. Jozefowicz et al. Improved variational inference with
    inverse autoregressive flow. NeurIPS 2016 (free bits).
    D. Ha and D. Eck. A neural representation of sketch drawings. ICLR 2018 (``KL_min``).
"""

from __future__ import annotations

import pyro
import torch
import torch.nn.functional as F

__all__ = ["KL_FLOOR_SITE", "check_kl_floor", "kl_floor_factor", "standard_normal_kl"]

#: name of the guide's factor site.
KL_FLOOR_SITE = "kl_floor"


def check_kl_floor(kl_floor: float) -> float:
    """``kl_floor`` as a float; ``ValueError`` unless it is non-negative."""
    if not kl_floor >= 0:
        raise ValueError(f"kl_floor must be non-negative, got {kl_floor}")
    return float(kl_floor)


def standard_normal_kl(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``KL(N(loc, diag scale^2) || N(0, I))`` [...] in closed form, summed over the last dim."""
    return 0.5 * (loc.square() + scale.square() - 1.0 - 2.0 * scale.log()).sum(-1)


def kl_floor_factor(
    loc: torch.Tensor,
    scale: torch.Tensor,
    kl_floor: float,
    kl_weight: torch.Tensor | float,
    num_data: int,
) -> None:
    """Add the guide factor ``"kl_floor"`` (module docstring) if ``kl_floor > 0``.

    Call it in the guide, outside the data plate, with the minibatch's guide parameters.

    Args:
        loc: guide means [M, K] of the minibatch.
        scale: guide standard deviations [M, K].
        kl_floor: kappa, free nats per example (``0``: no factor, nothing is computed).
        kl_weight: beta, the weight the model puts on its KL term.
        num_data: N, the examples in the data plate (the minibatch is scaled by N / M).
    """
    if kl_floor > 0:
        shortfall = F.relu(kl_floor - standard_normal_kl(loc, scale).mean())
        pyro.factor(KL_FLOOR_SITE, num_data * kl_weight * shortfall, has_rsample=True)
