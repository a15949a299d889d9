"""What every ``pyrovae`` subcommand shares: option types that refuse bad values, the run
options (``--device``, ``--seed``, ``--out``, ``--data-root``), the checks of an output folder
before any work starts, and the one-line messages for faults the user can fix.

Every message a user sees for a bad input is a `UsageError` (or an argparse error), which
`pyrovae.cli.main` prints as one line ``pyrovae: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


class UsageError(ValueError):
    """A bad option or input the user can fix: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line naming the command and the fix."""

    def error(self, message: str):  # noqa: D401 - argparse's API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------- option types
def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``0`` never means "all" or "none")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


# ---------------------------------------------------------------------------------- run options
def add_device_seed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default=None,
        help="cpu, cuda or cuda:N (default: cuda when available, else cpu)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed (default 0)")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root", default=None,
        help="folder holding MNIST/raw, FashionMNIST/raw, SVHN, celeba (default $PYROVAE_DATA, "
        "else ~/.cache/pyrovae)",
    )
    parser.add_argument(
        "--no-download", action="store_true",
        help="fail with a clear error instead of downloading missing data",
    )


def resolve_device(name: str | None) -> torch.device:
    """``--device`` as a ``torch.device``: default cuda when available; a GPU asked for on a
    machine without one is a `UsageError`."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown --device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {name} asked for a GPU, but this torch ({torch.__version__}) sees no "
                "CUDA device; use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type != "cpu":
        raise UsageError(f"--device {name}: only cpu and cuda are supported")
    return device


def check_writable_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Create the folder ``path`` (and its parents) and prove a file can be written in it.

    Called before any training, so a bad ``--out`` never costs a run.

    Raises:
        UsageError: ``path`` is a file, lies under a file, or is not writable.
    """
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is" if parent == path else f"lies under {parent}, which is"
            raise UsageError(f"{option} {path} {where} a file, not a folder; choose a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".pyrovae-write-test-"):
            pass
    except OSError as err:
        raise UsageError(
            f"{option} {path} is not writable ({err.strerror or err}); choose another folder"
        ) from None
    return path


def check_writable_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check that the file ``path`` can be written (its folder is created), before any work."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file name such as samples.png")
    check_writable_dir(path.parent if str(path.parent) else Path("."), option)
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path} is not writable; choose another file")
    return path


def command_line() -> str:
    return "pyrovae " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON atomically (a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------- faults
OUT_OF_MEMORY_TEXTS = ("not enough memory", "out of memory", "can't allocate memory")


def is_out_of_memory(err: BaseException | None) -> bool:
    """True for CUDA's ``OutOfMemoryError``, ``MemoryError`` and the CPU allocator's
    "can't allocate memory"/"not enough memory" (also when Pyro re-raised it with its trace)."""
    while err is not None:
        if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
            return True
        text = str(err).lower()
        if isinstance(err, RuntimeError) and any(t in text for t in OUT_OF_MEMORY_TEXTS):
            return True
        err = err.__cause__
    return False


def out_of_memory_message(args: argparse.Namespace) -> str:
    """The one-line message for an out-of-memory fault, naming the options that set memory."""
    options = getattr(args, "memory_options", ("--batch-size",))
    def value(option: str) -> str:
        found = getattr(args, option.lstrip("-").replace("-", "_"), None)
        return "all the data" if found is None and option == "--batch-size" else str(found)

    values = ", ".join(f"{o} {value(o)}" for o in options)
    return (
        f"out of memory ({values}): lower {' or '.join(options)}"
        + (" or use --device cpu" if str(getattr(args, "device", "")).startswith("cuda") else "")
    )


def progress_enabled(args: argparse.Namespace) -> bool | None:
    """``fit``'s ``progress=``: off with ``-q``, else a tqdm bar when stderr is a terminal."""
    return False if getattr(args, "log_level", logging.INFO) >= logging.WARNING else None



# ---------------------------------------------------------------------------------- run folders
OPTIONS_FILE = "options.json"
RUN_FILES = ("last.pt", "previous.pt")  # options.json alone: a start that failed


def start_run_folder(out: str | os.PathLike, command: str) -> Path:
    """Check ``--out`` for a new training run: writable, and holding no earlier run (which
    ``pyrovae ... resume --out`` continues), so two runs never mix in one folder."""
    out = check_writable_dir(out)
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found:
        raise UsageError(
            f"--out {out} already holds a run ({', '.join(found)}): continue it with "
            f"'pyrovae {command} resume --out {out}', or choose another --out"
        )
    return out


def read_options(out: str | os.PathLike, command: str) -> dict[str, Any]:
    """The options a run in ``out`` was started with (``options.json``, written by ``train``)."""
    path = Path(out) / OPTIONS_FILE
    if not path.is_file():
        raise UsageError(
            f"--out {out} holds no {command} run to resume ({path} is missing); start one with "
            f"'pyrovae {command} train --out {out}'"
        )
    check_writable_dir(out)
    return json.loads(path.read_text())


def add_train_basics(parser: argparse.ArgumentParser, out: str, epochs: int) -> None:
    """``--epochs``, ``--batch-size``, ``--lr``, ``--out`` and the device, seed, data options."""
    parser.add_argument("--epochs", type=positive_int, default=epochs,
                        help=f"training epochs (default {epochs})")
    parser.add_argument("--batch-size", type=positive_int, default=100,
                        help="images per step (default 100)")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam step (1e-3)")
    parser.add_argument("--out", default=out,
                        help=f"run folder: checkpoints, options.json, train.json (default {out})")
    add_device_seed(parser)
    add_data_options(parser)


def add_resume_parser(sub, command: str, run) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "resume", help="continue a run from its last checkpoint",
        description=f"Continue the run in --out (started by `pyrovae {command} train`) from its "
        "last checkpoint with the options it was started with; --epochs raises its total.",
    )
    parser.add_argument("--out", required=True, help="the run folder to continue")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="new total number of epochs (default: the run's)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    add_data_options(parser)
    parser.set_defaults(run=run)
    return parser


def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoint written by train (RUN/last.pt or RUN/best.pt)")
    add_device_seed(parser)


def training_options(checkpoint: dict[str, Any], path: str | os.PathLike, family: str) -> dict:
    """The CLI options stored in a checkpoint by ``train``; a clear error for another file."""
    options = (checkpoint.get("fit_config") or {}).get("user") or {}
    if options.get("family") != family:
        raise UsageError(
            f"--checkpoint {path} was not written by 'pyrovae {family} train' "
            f"(it holds {checkpoint.get('model_class', 'no model')})"
        )
    return options
