"""``pyrovae ppca``: PPCA fitted by the closed form and by SVI, and compared.

The experiment lives in [`pyrovae.runs.ppca`][]; this module parses the options, calls it, shows
the progress (a bar on a terminal, a few lines otherwise) and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
from typing import IO

import torch

from pyrovae.cli._common import add_data_options, add_device_seed, progress_enabled
from pyrovae.data import load_dataset
from pyrovae.infer.distributed import global_rank, main_first
from pyrovae.runs.folder import check_writable_dir
from pyrovae.runs.launch import (
    add_parallel_options,
    positive_float,
    positive_int,
    resolve_device,
    start_processes,
)
from pyrovae.runs.ppca import DEFAULTS, compare_ppca, format_table, save_figures
from pyrovae.runs.provenance import command_line, write_json

#: Progress lines of a run whose stderr is not a terminal (a log file, CI): about this many.
PROGRESS_LINES = 10


class EpochProgress:
    """A ``fit`` callback that shows the SVI fit's progress on ``stream`` (default stderr): a
    tqdm bar over the epochs when ``bar`` is true, else one line every
    ``ceil(epochs / PROGRESS_LINES)`` epochs and after the last.

    Each shows the latest exact log-likelihood per example and how far it is below the closed
    form's (from the rows that [`compare_ppca`][pyrovae.runs.ppca.compare_ppca] evaluates).
    """

    def __init__(self, epochs: int, bar: bool, stream: IO[str] | None = None) -> None:
        self.epochs = epochs
        self.stream = stream or sys.stderr
        self.every = max(1, math.ceil(epochs / PROGRESS_LINES))
        self.latest = ""
        self.bar = None
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=epochs, unit="epoch", desc="SVI", file=self.stream,
                            leave=False, dynamic_ncols=True)

    def __call__(self, info) -> None:
        row = info.row
        if "per_example" in row:
            self.latest = (f"log p(x) {row['per_example']:.4f} nats/example, "
                           f"{row['gap_per_example']:.2g} below the closed form")
        done = info.epoch + 1
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix_str(self.latest, refresh=False)
            if done == self.epochs:
                self.bar.close()
        elif done % self.every == 0 or done == self.epochs:
            shown = f": {self.latest}" if self.latest else ""
            print(f"epoch {done}/{self.epochs}{shown}", file=self.stream, flush=True)


@contextlib.contextmanager
def epoch_lines_off():
    """Raise the trainer's logger to WARNING for the block, then restore its level."""
    trainer = logging.getLogger("pyrovae.infer.trainer")
    level = trainer.level
    trainer.setLevel(logging.WARNING)
    try:
        yield
    finally:
        trainer.setLevel(level)


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``ppca`` subcommand's options, on the subparsers ``sub`` of the top-level parser."""
    digits, mnist = DEFAULTS["digits"], DEFAULTS["mnist"]
    ppca = sub.add_parser(
        "ppca", help="fit PPCA by the closed form and by SVI, and compare them",
        description="Fit probabilistic PCA by its closed-form maximum-likelihood solution and by "
        "SVI, print both log-likelihoods side by side, and write figures and a JSON report. "
        "Digits runs on one thread (its steps are too small to share) unless OMP_NUM_THREADS "
        "is set.")
    add = ppca.add_argument
    add("--dataset", default="digits", choices=["digits", "mnist", "fashion-mnist"],
        help="data set (default: digits, bundled with scikit-learn, works offline)")
    add("--latent-dim", type=positive_int, default=10, help="K (default 10)")
    add("--epochs", type=positive_int, default=None,
        help=f"SVI epochs (default: {digits.epochs} for digits, {mnist.epochs} for mnist and "
        "fashion-mnist)")
    add("--lr", type=positive_float, default=None,
        help=f"initial Adam step, cosine-decayed to 0 (default: {digits.lr} for digits, "
        f"else {mnist.lr})")
    add("--num-particles", type=positive_int, default=None,
        help=f"vectorised ELBO samples per point (default: {digits.num_particles} for digits, "
        f"else {mnist.num_particles})")
    add("--batch-size", type=positive_int, default=None,
        help=f"minibatch size (default: all the data for digits, {mnist.batch_size} for "
        "mnist/fashion-mnist)")
    add("--eval-every", type=positive_int, default=None,
        help="epochs between exact log-likelihood evaluations (default: "
        f"{digits.eval_every} for digits, else {mnist.eval_every})")
    add_device_seed(ppca)
    add_parallel_options(ppca)
    add_data_options(ppca)
    add("--out", default="runs/ppca", help="output folder (default runs/ppca)")
    ppca.set_defaults(run=run, memory_options=("--num-particles", "--batch-size"))
    return ppca


def run(args: argparse.Namespace) -> int:
    """Fit, print the table, write ``report.json`` and the figures under ``args.out``."""
    device = resolve_device(args.device)
    start_processes(args.devices, args.num_nodes, device)
    out = main_first(check_writable_dir, args.out)
    threads_given = getattr(args, "threads", None)
    for name, value in DEFAULTS[args.dataset]._asdict().items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    # A data set's default thread count gives way to the user's OMP_NUM_THREADS.
    if threads_given is not None or (args.threads and "OMP_NUM_THREADS" not in os.environ):
        torch.set_num_threads(args.threads)
    callbacks = []
    if progress_enabled(args) is not False and global_rank() == 0:
        callbacks.append(EpochProgress(args.epochs, bar=sys.stderr.isatty()))
    # The progress above replaces fit's line per epoch (-v brings those back).
    quiet_epochs = callbacks and args.log_level > logging.DEBUG
    with epoch_lines_off() if quiet_epochs else contextlib.nullcontext():
        report, closed, model = compare_ppca(
            dataset=args.dataset, latent_dim=args.latent_dim, epochs=args.epochs, lr=args.lr,
            batch_size=args.batch_size, seed=args.seed, num_particles=args.num_particles,
            root=args.data_root, download=not args.no_download, device=device,
            eval_every=args.eval_every, devices=args.devices, num_nodes=args.num_nodes,
            callbacks=callbacks)
    if global_rank() != 0:  # rank 0 writes the report and figures
        return 0
    image_shape = load_dataset(args.dataset, "test", root=args.data_root,
                               download=False).image_shape
    figures = save_figures(report, closed, model, image_shape, out)
    report["command"] = command_line("pyrovae")
    report["figures"] = [f.name for f in figures]
    write_json(out / "report.json", report)
    print(f"PPCA on {report['dataset']} (N={report['n']}, D={report['data_dim']}, "
          f"K={report['latent_dim']})")
    print(format_table(report))
    print(f"wrote {out / 'report.json'} and {', '.join(str(f) for f in figures)}")
    return 0
