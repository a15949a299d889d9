"""Helpers shared by the VAE experiments: their options, time-budgeted training, records.

The data, the model and the metrics come from the run layer (``pyrovae.runs.vae``), which the
``pyrovae vae`` command shares. Not a script: the modules of ``experiments.vae`` import it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro

from pyrovae.infer import TimeBudget, fit
from pyrovae.models.networks import check_image_shape
from pyrovae.models.vae import VAE
from pyrovae.runs import vae as family
from pyrovae.runs.data import COLOUR_DATASETS, ImageSet, channels_first
from pyrovae.runs.launch import parallel_options
from pyrovae.runs.provenance import command_line, provenance, save_checkpoint
from pyrovae.runs.script import add_run_arguments, start_run

logger = logging.getLogger("vae_experiments")


def setup(args: argparse.Namespace) -> Path:
    """Logging, threads, validation (off unless ``--validate``), seeds and ``args.device`` (a
    ``torch.device`` afterwards); returns ``args.out``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    args.device = start_run(args)
    pyro.enable_validation(bool(getattr(args, "validate", False)))
    pyro.set_rng_seed(args.seed)
    return Path(args.out)


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


def train(
    module: VAE,
    data,
    *,
    epochs: int,
    minutes: float | None = None,
    checkpoint_dir: Path,
    on_epoch: Callable[[list[dict]], None] | None = None,
    callbacks=(),
    **fit_kwargs,
):
    """One ``pyrovae.fit`` for ``epochs`` epochs, stopped by a ``TimeBudget(minutes)``.

    The run resumes from ``checkpoint_dir/last.pt`` when there is one, so a protocol longer
    than one budget is a series of invocations with the same ``--out``. ``on_epoch(rows)``
    gets the history rows so far after every epoch (e.g. to write metrics.json). Returns the
    ``History`` (all epochs, earlier invocations' included) and this invocation's wall time.
    """
    started = time.perf_counter()

    def report(info) -> None:
        on_epoch([*info.history.epochs, info.row])

    history = fit(
        module, data, epochs=epochs, checkpoint_dir=checkpoint_dir, resume=True,
        callbacks=[*callbacks, *([report] if on_epoch else []), TimeBudget(minutes)],
        **fit_kwargs,
    )
    if on_epoch:
        on_epoch(history.epochs)
    return history, time.perf_counter() - started


def add_eval_args(parser: argparse.ArgumentParser, num_samples: int = 1000) -> None:
    parser.add_argument("--num-samples", type=int, default=num_samples,
                        help="K importance samples for the test NLL (0: skip)")
    parser.add_argument("--eval-examples", type=int, default=1000,
                        help="first N (binarised) test images for the NLL")


def train_vae(
    args, data: ImageSet, latent_dim: int, path: Path, objective: str = "elbo",
    num_particles: int = 1, **overrides,
):
    """Fit a VAE on ``data.train`` for ``args.epochs`` and save it to ``path``.

    Returns ``(model, history rows)``; the checkpoint holds the history and the command line.
    """
    model = make_vae(args, data, latent_dim, **overrides)
    model.check_data(data.test_x)
    started = time.perf_counter()
    history = fit(
        model, data.train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, objective=objective, num_particles=num_particles, device=args.device,
        **parallel_options(args),
    )
    wall = time.perf_counter() - started
    save_checkpoint(path, model, history=history.epochs, command=command_line(), wall_seconds=wall)
    logger.info("trained K=%d in %.0f s -> %s", latent_dim, wall, path)
    return model, history.epochs, wall
