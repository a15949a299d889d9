"""Training streams for [`fit`][pyrovae.fit] that draw their data afresh every epoch.

A stream has ``__len__`` and ``for_epoch(epoch) -> tuple of tensors``; what it yields depends
only on ``(seed, epoch)``, so a resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pyrovae.data.transforms import DynamicBinarized, epoch_seed


@dataclass
class SemiSupervisedData:
    """M2's data: the unlabelled and labelled training streams (given to ``fit`` as
    ``{"unlabelled": ..., "labelled": ...}``), the validation and test sets, and what a model
    needs to know of them. ``m1_dims_kept``: for M1+M2, the M1 dimensions M2 models."""

    unlabelled: Any
    labelled: Any
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_train: int
    image_shape: tuple[int, ...]
    num_classes: int | None = None
    name: str = ""
    m1_dims_kept: list[int] | None = None


class LabelledStream:
    """``(x_bin, y)`` with the images ``x`` [N, D] re-binarised every epoch, the labels ``y`` [N]
    unchanged (the labelled stream of semi-supervised training)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        self.images, self.y = DynamicBinarized(x, seed), y

    def __len__(self) -> int:
        return len(self.images)

    def for_epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (*self.images.for_epoch(epoch), self.y)


def encode_in_chunks(
    encoder, x: torch.Tensor, batch_size: int = 5000
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loc, scale)`` of a model's ``q(z | x)`` for the rows of ``x`` [N, D], in chunks.

    ``encoder`` is a model with ``encode(x) -> (loc, scale)`` (a trained VAE, e.g. M1).
    """
    parts = [encoder.encode(xb) for xb in x.split(batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def active_dimensions(
    encoder, x: torch.Tensor, min_std: float = 0.1, batch_size: int = 5000
) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent dimensions a VAE uses: those whose posterior mean varies across the data.

    Dimension k is *active* when the standard deviation over the rows of ``x`` of the posterior
    mean ``E_q[z_k | x]`` exceeds ``min_std`` (default 0.1, i.e. a variance above 0.01: the rule
    of Kingma et al.'s released M1+M2 code, which keeps ``std(q_mean) > 0.1`` over 1000 training
    images; Burda et al.'s "activity" ``Cov_x(E_q[z_k | x]) > 0.01`` is the same test). An
    inactive dimension's posterior is (nearly) the same for every image, so it carries no
    information about ``x`` and M2 would model noise there.

    Args:
        encoder: a model with ``encode(x) -> (loc, scale)`` (e.g. a trained VAE).
        x: the data [N, D] (N >= 2).
        min_std: the threshold on the standard deviation (population, over the N rows).

    Returns:
        ``(keep, std)``: the indices of the active dimensions (LongTensor, increasing) and the
        standard deviation of every dimension's posterior mean [K].
    """
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 rows to measure activity, got {x.shape[0]}")
    loc, _ = encode_in_chunks(encoder, x, batch_size)
    std = loc.std(0, unbiased=False)
    return (std > min_std).nonzero().flatten(), std


class M1Codes:
    """Draws of a VAE's posterior ``z1 ~ q(z1 | x_bin)``, afresh every epoch (Kingma et al.'s M1).

    Every epoch binarises the images ``x`` [N, D] anew (as [`DynamicBinarized`][]), encodes
    them with the VAE ``m1`` and draws one ``z1`` per image; with labels ``y`` [N] it yields
    ``(z1, y)``, else ``(z1,)``. The draw depends only on ``(seed, epoch)``, so a resumed run
    sees the same codes; the codes are on ``x``'s device with ``m1``'s dtype. With ``keep``
    (indices, e.g. from [`active_dimensions`][]) only those dimensions of ``z1`` are yielded
    (drawn in full first, so the kept values do not depend on ``keep``). With
    ``binarize=False`` the grey-level images are encoded as they are (Kingma et al.'s M1+M2,
    whose M1 models grey levels): only ``z1`` is drawn afresh every epoch.
    """

    def __init__(self, m1, x: torch.Tensor, seed: int, y: torch.Tensor | None = None,
                 keep: torch.Tensor | None = None, binarize: bool = True) -> None:
        self.m1, self.images, self.y, self.seed = m1, DynamicBinarized(x, seed), y, seed
        self.keep, self.grey = keep, None if binarize else x

    def __len__(self) -> int:
        return len(self.images)

    def for_epoch(self, epoch: int) -> tuple[torch.Tensor, ...]:
        (x_in,) = self.images.for_epoch(epoch) if self.grey is None else (self.grey,)
        loc, scale = encode_in_chunks(self.m1, x_in)
        generator = torch.Generator(device=loc.device)
        generator.manual_seed(epoch_seed(self.seed + 7919, epoch))
        z1 = loc + scale * torch.randn(loc.shape, generator=generator, dtype=loc.dtype,
                                       device=loc.device)
        if self.keep is not None:
            z1 = z1[:, self.keep.to(z1.device)]
        return (z1,) if self.y is None else (z1, self.y)
