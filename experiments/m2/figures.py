"""M2 figures from a trained checkpoint: class-conditional samples and style transfer (analogies).

1. ``samples.png``: one row per class y = 0..C-1; column j uses the same prior draw
   ``z_j ~ N(0, I)`` in every row, so a column shows one "style" written as every digit. Images
   are decoder means ``p(x | y, z)``.
2. ``analogies.png``: first column real test images x; then, for every class k, the decoder mean
   ``p(x | y=k, z)`` with ``z`` the mean of ``q(z | x, y_true)``: the test image's style carried
   over to every class.

With ``--m1 M1.pt`` (an M1+M2 model, trained by ``experiments.m2.mnist --m1``) M2's inputs are M1's
posterior means of the images, and every decoded code ``E[z1 | y, z]`` is shown as M1's decoder
mean ``p(x | z1)``.

Writes the PNGs, ``metrics.json`` (checkpoint, its test error, the test error of the generative
model's own classification ``argmax_y L(x, y)``, the indices shown) and a copy of
the model (weights and config, no optimiser state) under ``--out``.

References:
    D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling. Semi-supervised learning with deep
    generative models. NeurIPS 2014 (figure 1).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import pyrovae
from experiments.figures import save_table_of_images
from pyrovae.data import encode_in_chunks, load_dataset
from pyrovae.infer import param_scope
from pyrovae.runs.data import test_images
from pyrovae.runs.m2 import generative_error, test_error
from pyrovae.runs.provenance import provenance, write_json
from pyrovae.runs.script import add_run_arguments, run_script, start_run


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="an M2 best.pt or last.pt")
    p.add_argument("--m1", type=Path, default=None, help="the M1 VAE of an M1+M2 model")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--columns", type=int, default=10, help="styles per row of samples.png")
    p.add_argument("--rows", type=int, default=10, help="test images in analogies.png")
    p.add_argument("--limit", type=int, default=None, help="test images used for the error")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-model-copy", action="store_true", help="do not write OUT/model.pt")
    p.add_argument("--elbo-samples", type=int, default=1,
                   help="draws of z per class for argmax_y L(x, y)")
    add_run_arguments(p, out="runs/m2_figures")
    return p.parse_args(argv)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def class_conditional_samples(model, columns: int, seed: int, to_pixels=identity) -> torch.Tensor:
    """``[C, columns, D]``: row y, column j is the decoder mean of ``p(x | y, z_j)``."""
    like = next(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(columns, model.latent_dim, generator=gen).to(like)
    classes = torch.arange(model.num_classes, device=like.device)
    y = classes[:, None].expand(-1, columns).reshape(-1)
    means = to_pixels(model.decode(z.repeat(model.num_classes, 1), y))
    return means.reshape(model.num_classes, columns, -1)


def analogies(model, x: torch.Tensor, y: torch.Tensor, to_inputs=identity,
              to_pixels=identity) -> torch.Tensor:
    """``[R, 1 + C, D]``: each test image, then its style ``E_q[z|x,y]`` decoded as every class."""
    loc, _ = model.encode(to_inputs(x), y)
    classes = torch.arange(model.num_classes, device=loc.device)
    z = loc.repeat_interleave(model.num_classes, 0)
    y_all = classes.repeat(x.shape[0])
    decoded = to_pixels(model.decode(z, y_all)).reshape(x.shape[0], model.num_classes, -1)
    return torch.cat([x[:, None, :], decoded], 1)


def m1_dims_kept(checkpoint: Path, data_dim: int, m1_dim: int, device) -> torch.Tensor:
    """The M1 dimensions an M1+M2 model reads: all, or the active ones its run kept
    (``m1_dims_kept`` in the ``metrics.json`` beside the checkpoint)."""
    if data_dim == m1_dim:
        return torch.arange(m1_dim, device=device)
    metrics = checkpoint.parent / "metrics.json"
    kept = json.loads(metrics.read_text()).get("m1_dims_kept") if metrics.exists() else None
    if kept is None or len(kept) != data_dim:
        raise ValueError(f"M2 reads {data_dim} of M1's {m1_dim} dimensions, but {metrics} does "
                         "not say which (m1_dims_kept)")
    return torch.tensor(kept, device=device)


def run(args: argparse.Namespace) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    device = start_run(args)
    model = pyrovae.load_checkpoint(args.checkpoint, map_location=device)
    to_inputs = to_pixels = identity
    if args.m1 is not None:
        m1 = pyrovae.load_checkpoint(args.m1, map_location=device).eval()
        keep = m1_dims_kept(args.checkpoint, model.data_dim, m1.latent_dim, device)

        def to_pixels(codes):
            # Inactive M1 dimensions (pruned before M2) at their prior mean, 0.
            full = codes.new_zeros(codes.shape[0], m1.latent_dim)
            full[:, keep] = codes
            return m1.decode(full)

        def to_inputs(x):
            return encode_in_chunks(m1, x)[0][:, keep]

    test = load_dataset(args.dataset, "test", device=device)
    x_test, y_test = test_images(test.x, "dynamic"), test.y
    if args.limit is not None:
        x_test, y_test = x_test[: args.limit], y_test[: args.limit]
    shape = tuple(test.image_shape)
    with param_scope(model):
        samples = class_conditional_samples(model, args.columns, args.seed, to_pixels)
        gen = torch.Generator().manual_seed(args.seed)
        # One test image per class first (in class order), then random ones.
        first = [int((y_test == k).nonzero()[0]) for k in range(model.num_classes)
                 if (y_test == k).any()]
        extra = torch.randperm(len(y_test), generator=gen)[: max(args.rows - len(first), 0)]
        shown = torch.tensor((first + extra.tolist())[: args.rows], device=device)
        table = analogies(model, x_test[shown], y_test[shown], to_inputs, to_pixels)
        inputs = to_inputs(x_test)
        error = test_error(model, inputs, y_test)
        torch.manual_seed(args.seed)
        generative = generative_error(model, inputs, y_test, args.elbo_samples)
    digits = [str(k) for k in range(model.num_classes)]
    save_table_of_images(args.out / "samples.png", samples, shape,
                         row_titles=[f"y={d}" for d in digits],
                         title="p(x | y, z): rows y, columns one z ~ N(0, I) each")
    save_table_of_images(args.out / "analogies.png", table, shape,
                         column_titles=["test x", *[f"y={d}" for d in digits]],
                         title="style z = E q(z | x, y_true), decoded as every class")
    # Weights and config only (no optimiser state): loadable with pyrovae.load_checkpoint.
    if not args.no_model_copy:
        pyrovae.save_checkpoint(args.out / "model.pt", model, source=str(args.checkpoint))
    metrics = dict(**provenance(device), checkpoint=str(args.checkpoint),
                   m1=str(args.m1) if args.m1 else None,
                   test_error=error, generative_test_error=generative,
                   elbo_samples=args.elbo_samples,
                   test_images=len(y_test), analogy_test_indices=shown.tolist(),
                   model_config=model.config)
    write_json(args.out / "metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    run_script(lambda: run(parse_args()))
