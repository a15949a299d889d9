"""Helpers shared by the VAE experiments: their options, data, model and records.

The data, the model, the training loop and the metrics come from the run layer
(``pyrovae.runs.vae``), which the ``pyrovae vae`` command shares. Not a script: the modules of
``experiments.vae`` import it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pyro

from pyrovae.models.networks import check_image_shape
from pyrovae.models.vae import VAE
from pyrovae.runs import vae as family
from pyrovae.runs.data import COLOUR_DATASETS, ImageSet, channels_first
from pyrovae.runs.provenance import command_line, provenance, save_checkpoint
from pyrovae.runs.script import add_run_arguments, start_script

logger = logging.getLogger("vae_experiments")


def setup(args: argparse.Namespace) -> Path:
    """Logging, threads, validation (off unless ``--validate``), seeds and ``args.device`` (a
    ``torch.device`` afterwards); returns ``args.out``."""
    args.device, out = start_script(args)
    pyro.enable_validation(bool(getattr(args, "validate", False)))
    pyro.set_rng_seed(args.seed)
    return out


def add_common_args(parser: argparse.ArgumentParser, out: str, epochs: int = 10) -> None:
    """Options every VAE script shares: data, architecture, training, output."""
    parser.add_argument("--dataset", default="mnist",
                        choices=["mnist", "fashion-mnist", "digits", *COLOUR_DATASETS],
                        help="svhn (32x32) and celeba (64x64) are colour images, never binarised")
    parser.add_argument("--data-root", default=None, help="default: $PYROVAE_DATA")
    family.add_options(parser)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validate", action="store_true", help="Pyro validation (slower)")
    add_run_arguments(parser, out, threads=1)


def script_parser(description: str, out: str, epochs: int, evaluation: bool = True):
    """A parser with the options every VAE script shares (and ``add_eval_args``'s unless
    ``evaluation=False``)."""
    parser = argparse.ArgumentParser(description=description)
    add_common_args(parser, out=out, epochs=epochs)
    if evaluation:
        add_eval_args(parser)
    return parser


def run_header(args: argparse.Namespace, data: ImageSet) -> dict:
    """What every VAE script's metrics.json starts with: provenance, data set, architecture."""
    return dict(**provenance(args.device), dataset=data.name, arch=args.arch,
                likelihood=args.likelihood)


def trained_record(args: argparse.Namespace, data: ImageSet, model: VAE, history: list[dict],
                   wall: float) -> dict:
    """One trained model's entry: its latent size, training history and time, test metrics."""
    return dict(latent_dim=model.latent_dim, epochs=len(history), train_seconds=wall,
                history=history,
                test=family.metrics(model, data.test_x, num_samples=args.num_samples,
                                        eval_examples=args.eval_examples))


def data_from_args(args: argparse.Namespace) -> ImageSet:
    return family.data(vars(args), root=args.data_root, device=args.device)


def refuse_datasets(args: argparse.Namespace, datasets, reason: str) -> None:
    """Stop a script that cannot take ``--dataset`` among ``datasets``: a one-line error."""
    if args.dataset in datasets:
        raise SystemExit(f"error: --dataset {args.dataset}: {reason}")


def arch_for(args: argparse.Namespace, data: ImageSet) -> str:
    """``--arch``, once the networks can take ``data``'s images (a one-line error if not)."""
    try:
        check_image_shape(args.arch, data.data_dim, channels_first(data.image_shape))
    except ValueError as err:
        raise SystemExit(f"error: --arch {args.arch} on {data.name}: {err}") from None
    return args.arch


def make_vae(args: argparse.Namespace, data: ImageSet, latent_dim: int, **overrides) -> VAE:
    """The script's VAE for ``data`` (``pyrovae.runs.vae.build``), once the networks can take
    its images (a one-line error if not)."""
    return family.build({**vars(args), "arch": arch_for(args, data), "latent_dim": latent_dim},
                        data, **overrides)


def burda_schedule(epoch: int) -> float:
    """Burda et al.'s learning-rate factor ``10^(-i/7)`` for epochs in ``[sum_{j<i} 3^j, ...)``."""
    stage, start = 0, 0
    while epoch >= start + 3**stage:
        start += 3**stage
        stage += 1
    return 10.0 ** (-stage / 7.0)


def add_eval_args(parser: argparse.ArgumentParser, num_samples: int = 1000) -> None:
    parser.add_argument("--num-samples", type=int, default=num_samples,
                        help="K importance samples for the test NLL (0: skip)")
    parser.add_argument("--eval-examples", type=int, default=1000,
                        help="first N (binarised) test images for the NLL")


def train_vae(args, data: ImageSet, latent_dim: int, path: Path):
    """Fit a VAE (the ELBO, one sample) on ``data.train`` for ``args.epochs`` and save it to
    ``path``. Returns ``(model, history rows, seconds)``; the checkpoint holds the history and
    the command line."""
    model = make_vae(args, data, latent_dim)
    model.check_data(data.test_x)
    options = {**vars(args), "objective": "elbo", "num_particles": 1}
    history, wall = family.train(model, data.train, options, device=args.device)
    save_checkpoint(path, model, history=history.epochs, command=command_line(), wall_seconds=wall)
    logger.info("trained K=%d in %.0f s -> %s", latent_dim, wall, path)
    return model, history.epochs, wall
