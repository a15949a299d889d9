"""The start and end of an experiment script: the run options every script shares (``--out``,
``--threads``, ``--force-new``, ``--device``, ``--devices``, ``--num-nodes``), `start_run`,
which applies them in order, and `run_script`, which runs a script's ``main`` and ends a fault
the user can act on (a `RunError`, bad data, a refused checkpoint, Ctrl-C, a full disk) with
one line ``error: ...``, as the ``pyrovae`` command does.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch

from pyrovae.data.idx import IDXError
from pyrovae.data.mnist import ChecksumError
from pyrovae.infer import distributed
from pyrovae.infer.checkpoint import CheckpointError, no_room
from pyrovae.models.base import DataError
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


#: Exit statuses, the command line's: a bad input, a fault of the run, Ctrl-C (128 + SIGINT).
BAD_INPUT, RUN_FAULT, INTERRUPTED = 2, 1, 130
#: Faults of the input that the user can fix: options, data, a refused or missing checkpoint.
USER_ERRORS = (RunError, DataError, CheckpointError, ChecksumError, IDXError, FileNotFoundError,
               NotADirectoryError, PermissionError)


def fault_line(err: BaseException) -> tuple[str, int] | None:
    """The one line and exit status of a fault the user can act on; None for any other error
    (a bug: its traceback is what to report)."""
    if isinstance(err, KeyboardInterrupt):
        return ("interrupted (Ctrl-C); checkpoints are written whole, so those already in --out "
                "are intact", INTERRUPTED)
    full = no_room(err)
    if full is not None:  # before OSError's other kinds: a full disk is not a bad --out
        where = f" while writing {full.filename}" if full.filename else ""
        return (f"no room on the disk ({full.strerror or full}){where}; the files written "
                "before are intact: free some space and run the command again", RUN_FAULT)
    if isinstance(err, FloatingPointError):  # NonFiniteLossError: a fault of the run
        return f"{err}; try a lower --lr", RUN_FAULT
    if isinstance(err, USER_ERRORS):
        return (str(err).strip().splitlines() or [type(err).__name__])[0], BAD_INPUT
    return None


def run_script(main: Callable[[], Any]) -> NoReturn:
    """Run an experiment script's ``main()`` and exit with its status (0 unless it returns an
    int); a fault that `fault_line` knows ends the script with its one line ``error: ...`` on
    stderr (printed by rank 0 only: under ``--devices`` every process fails alike) and its
    status, never a traceback."""
    try:
        result = main()
    except (Exception, KeyboardInterrupt) as err:
        fault = fault_line(err)
        if fault is None:
            raise
        if distributed.global_rank() == 0:
            print(f"error: {fault[0]}", file=sys.stderr)
        raise SystemExit(fault[1]) from None
    raise SystemExit(result if isinstance(result, int) else 0)
