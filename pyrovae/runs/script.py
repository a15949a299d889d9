"""The start of an experiment script: the run options every script shares (``--out``,
``--threads``, ``--force-new``, ``--device``, ``--devices``, ``--num-nodes``) and `start_run`,
which applies them in order. A `RunError` here ends the script with one line ``error: ...``.

Data-parallel runs (``--devices N``, ``--num-nodes M``): `start_run` launches the processes
before the script does anything else (the script runs again once per extra device, see
docs/scaling.md), guards ``--out`` on rank 0, and silences the other ranks. From then on
``write_json``, ``save_checkpoint`` and ``experiments.figures.save_figure`` write on rank 0
only, so a script passes ``**parallel_options(args)`` to ``fit`` and, after it, does its
evaluation only where ``evaluates()`` (rank 0).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from pyrovae.infer import distributed
from pyrovae.runs.folder import guard_run_folder
from pyrovae.runs.launch import (
    RunError,
    add_device_options,
    add_parallel_options,
    parallel_options,
    resolve_device,
    set_threads,
    start_processes,
)


def add_run_arguments(parser: argparse.ArgumentParser, out: str, threads: int | None = None):
    """``--out`` (default ``out``, under ``runs/``), ``--force-new``, ``--device``,
    ``--threads`` (default ``threads``; None leaves torch's choice), ``--devices`` and
    ``--num-nodes``."""
    parser.add_argument("--out", type=Path, default=Path(out),
                        help="output folder (default %(default)s)")
    parser.add_argument("--force-new", action="store_true",
                        help="start afresh even if --out holds a run with other options (the "
                        "old folder is moved aside to OUT.old-TIME)")
    add_device_options(parser, threads=threads)
    add_parallel_options(parser)


def start_device(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads``, start the processes of ``--devices``/``--num-nodes`` (if any) and
    return ``--device`` as a ``torch.device``."""
    try:
        set_threads(getattr(args, "threads", None))
        device = resolve_device(args.device)
        start_processes(**parallel_options(args), device=device)
    except RunError as err:
        raise SystemExit(f"error: {err}") from None
    return device


def start_run(args: argparse.Namespace) -> torch.device:
    """`start_device`, then guard and lock ``--out`` on rank 0 (``guard_run_folder``)."""
    device = start_device(args)
    distributed.main_first(_guard, args.out, vars(args), getattr(args, "force_new", False))
    return device


def _guard(out: Path, options: dict, force_new: bool) -> None:
    # A SystemExit raised on rank 0 reaches the other ranks bare: the line is printed once.
    try:
        guard_run_folder(out, options, force_new=force_new)
    except RunError as err:
        raise SystemExit(f"error: {err}") from None


def start_script(args: argparse.Namespace, log: bool = True) -> tuple[torch.device, Path]:
    """`start_run` after INFO logging to stdout (``log``) and Pyro's validation off; returns
    ``(device, out)``."""
    import pyro

    if log:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    pyro.enable_validation(False)
    device = start_run(args)
    return device, Path(args.out)
