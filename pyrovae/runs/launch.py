"""Where a run computes: the device (`resolve_device`), the torch threads (`set_threads`) and the
processes of a data-parallel run (`start_processes`), with the options that set them
(``--device``, ``--threads``, ``--devices``, ``--num-nodes``) and option types that refuse
bad values.

A fault the user can fix is a `RunError` with a one-line message: the command line prints it
as ``pyrovae: error: ...`` (exit status 2), a script as ``error: ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

import torch

from pyrovae.infer import distributed


class RunError(ValueError):
    """A bad option or input the user can fix: one line that names it and the fix."""


# ---------------------------------------------------------------------------------- option types
def _number(text: str, convert, noun: str, accept) -> int | float:
    """``convert(text)`` if ``accept`` takes it, else an ``ArgumentTypeError`` saying it must be
    ``noun`` (a rejected integer is shown as parsed, a rejected float as typed)."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {noun}, got {text!r}") from None
    if not accept(value):
        shown = value if isinstance(value, int) else text
        raise argparse.ArgumentTypeError(f"must be {noun}, got {shown}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``0`` never means "all" or "none")."""
    return _number(text, int, "a positive integer", lambda value: value >= 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(text, int, "a non-negative integer", lambda value: value >= 0)


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    return _number(text, float, "a positive number", lambda value: 0 < value < float("inf"))


def fraction(text: str) -> float:
    """argparse type: a float in [0, 1)."""
    return _number(text, float, "a number in [0, 1)", lambda value: 0 <= value < 1)


# ---------------------------------------------------------------------------------- options
def add_device_options(parser: argparse.ArgumentParser, threads: int | None = None) -> None:
    """``--device`` and ``--threads`` (default ``threads``; None leaves torch's choice)."""
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    shown = threads if threads is not None else "torch's choice"
    parser.add_argument("--threads", type=positive_int, default=threads,
                        help=f"torch threads (default {shown})")


def add_parallel_options(parser: argparse.ArgumentParser, default: int | None = 1) -> None:
    """``--devices`` and ``--num-nodes``: data-parallel training (default ``default``; None:
    the run's, for ``resume``)."""
    shown = "the run's" if default is None else default
    parser.add_argument(
        "--devices", type=positive_int, default=default,
        help=f"processes per machine for data-parallel training, one per GPU with --device cuda "
        f"(default {shown}); --batch-size is per process, so a step sees devices x num-nodes x "
        "batch-size images; needs pip install 'pyrovae[lightning]'",
    )
    parser.add_argument("--num-nodes", type=positive_int, default=default,
                        help=f"machines, each running --devices processes (default {shown})")


def parallel_options(args: argparse.Namespace) -> dict[str, int]:
    """``fit``'s ``devices`` and ``num_nodes`` from ``--devices``/``--num-nodes``."""
    return {"devices": getattr(args, "devices", None) or 1,
            "num_nodes": getattr(args, "num_nodes", None) or 1}


# ---------------------------------------------------------------------------------- the device
def set_threads(threads: int | None) -> None:
    """``--threads``: ``torch.set_num_threads(threads)``; None leaves torch's default."""
    if threads:
        torch.set_num_threads(threads)


def resolve_device(name: str | None) -> torch.device:
    """``--device`` as a ``torch.device``: default cuda when available; a device this machine
    does not have is a `RunError`."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise RunError(f"unknown --device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RunError(
                f"--device {name} asked for a GPU, but this torch ({torch.__version__}) sees no "
                "CUDA device; use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RunError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type != "cpu":
        raise RunError(f"--device {name}: only cpu and cuda are supported")
    return device


def start_processes(devices: int, num_nodes: int, device: torch.device) -> int:
    """Launch (or join) the ``--devices``/``--num-nodes`` processes (the program runs again in
    each); on ranks other than 0 nothing is printed and logging shows warnings and errors only.
    Returns this process's rank (0 in a run of one process)."""
    if devices * num_nodes == 1:
        return 0
    if device.index is not None:
        raise RunError(
            f"--devices runs one process per GPU: give --device {device.type}, not {device}"
        )
    if not logging.getLogger("pyrovae").isEnabledFor(logging.DEBUG):
        with contextlib.suppress(ImportError):  # it sets its loggers' levels when imported
            import lightning_fabric  # noqa: F401
        logging.getLogger("lightning_fabric").setLevel(logging.WARNING)  # its banner: with -v
    try:
        rank = distributed.start_processes(devices, num_nodes, device)
    except ImportError as err:
        raise RunError(str(err)) from None
    if rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("pyrovae").setLevel(logging.WARNING)
    return rank
