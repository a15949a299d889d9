"""The 2-D latent space of M2 beside an unsupervised VAE's, coloured by the true label.

M2 with ``latent_dim=2`` is trained semi-supervised (``--n-labelled`` labels, the rest unlabelled,
validation-selected); its test images are placed at the mean of ``q(z | x, y_true)``. Since the
label is a separate latent, z only has to hold the style: classes overlap in z. A VAE with a 2-D
latent (``pyrovae.models.VAE``, same MLP width, trained on the same images without labels) must
put the class into z: classes form clusters. ``--m2-checkpoint`` reuses a 2-D M2 trained
elsewhere (e.g. ``python -m experiments.m2.mnist --latent-dim 2``) instead of training one. Writes
``latent2d.png``, ``metrics.json`` and the checkpoints under ``--out``.

References:
    D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling. Semi-supervised learning with deep
    generative models. NeurIPS 2014.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import pyrovae
from experiments.figures import save_latent_panels
from experiments.m2.common import train_m2
from pyrovae.data import DynamicBinarized, load_dataset
from pyrovae.infer import param_scope
from pyrovae.models import VAE
from pyrovae.runs import m2 as m2_family
from pyrovae.runs import vae as vae_family
from pyrovae.runs.m2 import test_error
from pyrovae.runs.provenance import command_line, evaluates, provenance, write_json
from pyrovae.runs.script import add_run_arguments, run_script, start_run


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--n-labelled", type=int, default=100)
    p.add_argument("--n-validation", type=int, default=10000)
    p.add_argument("--limit", type=int, default=None, help="use only the first N images (smoke)")
    p.add_argument("--hidden-sizes", type=int, nargs="+", default=[500])
    p.add_argument("--activation", default="softplus")
    p.add_argument("--lr", type=float, default=4e-4, help="M2's learning rate")
    p.add_argument("--labelled-weight", default="balanced",
                   help="weight of the supervised bound: a number, or 'balanced' = N_u / N_l")
    p.add_argument("--epochs", type=int, default=10, help="epochs of each model (at most)")
    p.add_argument("--max-minutes", type=float, default=None, help="M2's time budget (none)")
    p.add_argument("--points", type=int, default=5000, help="test images in the scatter")
    p.add_argument("--vae-epochs", type=int, default=None, help="default: --epochs")
    p.add_argument("--skip-vae", action="store_true")
    p.add_argument("--m2-checkpoint", type=Path, default=None,
                   help="use this trained 2-D M2 instead of training one")
    p.add_argument("--seed", type=int, default=0)
    add_run_arguments(p, out="runs/m2_latent2d")
    return p.parse_args(argv)


def train_vae(x_train: torch.Tensor, args: argparse.Namespace, epochs: int, out: Path):
    torch.manual_seed(args.seed)
    vae = VAE(data_dim=x_train.shape[1], latent_dim=2, hidden_sizes=args.hidden_sizes)
    options = {**vars(args), "epochs": epochs, "batch_size": 100, "lr": 1e-3}
    history, seconds = vae_family.train(vae, DynamicBinarized(x_train, args.seed), options,
                                        device=x_train.device, out=out)
    return vae, history, seconds


def options(args: argparse.Namespace) -> dict:
    """The 2-D M2's options: the default preset with a 2-D z."""
    return {**vars(args), "preset": None, "latent_dim": 2, "binarization": "dynamic"}


def train_m2_2d(args: argparse.Namespace, data) -> dict:
    torch.manual_seed(args.seed)
    m2 = m2_family.build(options(args), data)
    info = dict(labels=args.n_labelled, command=command_line(), model_config=m2.config)
    return train_m2(m2, data, args.out / "m2", options(args), device=args.device,
                    minutes=args.max_minutes, info=info)


def run(args: argparse.Namespace) -> dict:
    args.device = start_run(args)
    data = m2_family.data(options(args), device=args.device)
    if args.m2_checkpoint is None:
        m2_metrics = train_m2_2d(args, data)
    else:  # a 2-D M2 trained elsewhere (e.g. by experiments.m2.mnist --latent-dim 2)
        best = pyrovae.load_checkpoint(args.m2_checkpoint, map_location=args.device)
        if best.latent_dim != 2:
            raise ValueError(f"{args.m2_checkpoint} has latent_dim={best.latent_dim}, not 2")
        m2_metrics = dict(checkpoint=str(args.m2_checkpoint))
    vae = None
    if not args.skip_vae:  # trained before any evaluation: every rank takes part in both fits
        train = load_dataset(args.dataset, "train", device=args.device)
        x_train = train.x if args.limit is None else train.x[: args.limit]
        vae_epochs = args.epochs if args.vae_epochs is None else args.vae_epochs
        vae, history, seconds = train_vae(x_train, args, vae_epochs, args.out / "vae")
    if not evaluates():
        return {}
    if args.m2_checkpoint is None:
        best = pyrovae.load_checkpoint(args.out / "m2" / "best.pt", map_location=args.device)
    else:
        m2_metrics["test_error"] = test_error(best, data.x_test, data.y_test)
    x, y = data.x_test[: args.points], data.y_test[: args.points]
    with param_scope(best):
        m2_codes = best.encode(x, y)[0]
    panels = [(f"M2, z = mean of q(z | x, y_true), {args.n_labelled} labels "
               f"(test error {100 * m2_metrics['test_error']:.1f}%)", m2_codes)]
    keys = ("checkpoint", "test_error", "epochs_done", "best_epoch", "wall_seconds")
    metrics = dict(**provenance(args.device),
                   m2={k: m2_metrics[k] for k in keys if k in m2_metrics})
    if vae is not None:
        with param_scope(vae):
            vae_codes = vae.encode(x)[0]
        panels.append(("unsupervised VAE, z = mean of q(z | x)", vae_codes))
        metrics["vae"] = dict(epochs=len(history.epochs), wall_seconds=seconds,
                              final_loss_per_example=history.epochs[-1]["loss_per_example"])
    save_latent_panels(args.out / "latent2d.png", panels, y)
    write_json(args.out / "metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    # Denormal floats appear late in training and slow CPU steps down (a late 2-D M2
    # checkpoint: 0.14 s -> 0.10 s per 100-image step with flushing); flush them to zero.
    torch.set_flush_denormal(True)
    run_script(lambda: run(parse_args()))
