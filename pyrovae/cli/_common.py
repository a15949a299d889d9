"""What every ``pyrovae`` subcommand shares: option types that refuse bad values, the run
options (``--device``, ``--seed``, ``--out``, ``--data-root``), the checks of an output folder
before any work starts, the one-line messages for faults the user can fix, and the plumbing of
the model families' ``train``/``resume``/``evaluate``/``sample`` (run folders, ``fit``,
``train.json``, checkpoints, their parsers).

Every message a user sees for a bad input is a `UsageError` (or an argparse error), which
`pyrovae.cli.main` prints as one line ``pyrovae: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from pyrovae.cli._train import COLOUR_DATASETS, save_grid
from pyrovae.infer import History, distributed, fit, load_checkpoint
from pyrovae.infer.checkpoint import read_checkpoint

logger = logging.getLogger(__name__)


class UsageError(ValueError):
    """A bad option or input the user can fix: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line naming the command and the fix."""

    def error(self, message: str):  # noqa: D401 - argparse's API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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


# ---------------------------------------------------------------------------------- run options
def add_parallel_options(parser: argparse.ArgumentParser, default: int | None = 1) -> None:
    """``--devices`` and ``--num-nodes``: data-parallel training (default ``default``)."""
    shown = "the run's" if default is None else default
    parser.add_argument(
        "--devices", type=positive_int, default=default,
        help=f"processes per machine for data-parallel training, one per GPU with --device cuda "
        f"(default {shown}); --batch-size is per process, so a step sees devices x num-nodes x "
        "batch-size images; needs pip install 'pyrovae[lightning]'",
    )
    parser.add_argument(
        "--num-nodes", type=positive_int, default=default,
        help=f"machines, each running --devices processes (default {shown})",
    )


def start_processes(devices: int, num_nodes: int, device: torch.device) -> int:
    """Launch (or join) the ``--devices``/``--num-nodes`` processes (this command runs again in
    each); on ranks other than 0 nothing is printed and pyrovae logs warnings and errors only.
    Returns this process's rank."""
    if devices * num_nodes > 1 and device.index is not None:
        raise UsageError(
            f"--devices runs one process per GPU: give --device {device.type}, not {device}"
        )
    if devices * num_nodes > 1 and not logging.getLogger("pyrovae").isEnabledFor(logging.DEBUG):
        with contextlib.suppress(ImportError):  # it sets its loggers' levels when imported
            import lightning_fabric  # noqa: F401
        logging.getLogger("lightning_fabric").setLevel(logging.WARNING)  # its banner: with -v
    try:
        rank = distributed.start_processes(devices, num_nodes, device)
    except ImportError as err:
        raise UsageError(str(err)) from None
    if rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        logging.getLogger("pyrovae").setLevel(logging.WARNING)
    return rank


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
    """Write ``payload`` as indented JSON atomically (a temporary file, then a rename); on
    rank 0 only, under ``--devices``/``--num-nodes`` (the other ranks write nothing)."""
    path = Path(path)
    if distributed.global_rank() != 0:
        return path
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
        found = getattr(args, dest(option), None)
        return "all the data" if found is None and option == "--batch-size" else str(found)

    values = ", ".join(f"{o} {value(o)}" for o in options)
    return (
        f"out of memory ({values}): lower {' or '.join(options)}"
        + (" or use --device cpu" if str(getattr(args, "device", "")).startswith("cuda") else "")
    )


def dest(option: str) -> str:
    """The ``Namespace`` attribute of ``option``: ``--batch-size`` -> ``batch_size``."""
    return option.lstrip("-").replace("-", "_")


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


#: The grey-level data sets (``impute`` takes these only).
GREY_DATASETS = ("mnist", "fashion-mnist", "digits")
#: The data sets the model families' ``train --dataset`` accepts: grey, then colour.
DATASETS = (*GREY_DATASETS, *COLOUR_DATASETS)


def add_family_parser(
    sub, family: str, *, help: str, description: str, train_help: str, train_description: str
) -> tuple[argparse.ArgumentParser, Any, argparse.ArgumentParser]:
    """``pyrovae FAMILY`` with its subcommands: returns its parser, the subparsers' action (to
    add ``resume``, ``evaluate``, ``sample``) and ``train``'s parser, holding ``--dataset``."""
    parser = sub.add_parser(family, help=help, description=description)
    actions = parser.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", help=train_help, description=train_description)
    train.add_argument("--dataset", default="mnist", choices=DATASETS,
                       help="data set (default mnist; digits is bundled and offline; svhn "
                       "and celeba are colour, never binarised)")
    return parser, actions, train


def add_train_basics(parser: argparse.ArgumentParser, out: str, epochs: int) -> None:
    """``--epochs``, ``--batch-size``, ``--lr``, ``--out`` and the device, seed, data options."""
    parser.add_argument("--epochs", type=positive_int, default=epochs,
                        help=f"training epochs (default {epochs})")
    parser.add_argument("--batch-size", type=positive_int, default=100,
                        help="images per step and process (default 100)")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam step (1e-3)")
    parser.add_argument("--out", default=out,
                        help=f"run folder: checkpoints, options.json, train.json (default {out})")
    add_device_seed(parser)
    add_parallel_options(parser)
    add_data_options(parser)


def add_resume_parser(
    sub, command: str, fit_run: Callable[..., int], memory_options: tuple[str, ...]
) -> argparse.ArgumentParser:
    """``pyrovae COMMAND resume``, which runs [`resume_run`][] with ``fit_run``; the
    ``memory_options`` (named by the out-of-memory message) take the run's stored values."""
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
    add_parallel_options(parser, default=None)
    add_data_options(parser)
    parser.set_defaults(run=functools.partial(resume_run, command=command, fit_run=fit_run),
                        memory_options=memory_options)
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


# ---------------------------------------------------------------------------------- subcommands
# What ``train``, ``resume``, ``evaluate`` and ``sample`` of every model family (``vae.py``,
# ``m2.py``) do alike; each family module keeps its data, model, metrics and printed lines.
def start_training(
    args: argparse.Namespace, family: str, keys: tuple[str, ...], **options: Any
) -> tuple[Path, dict[str, Any]]:
    """``train``'s checks (``--device``, then a fresh ``--out``) and the run's options:
    ``family``, the given ``options``, then ``args``' values of ``keys``, ``--devices`` and
    ``--num-nodes``. The processes of ``--devices`` start here; rank 0 checks ``--out``."""
    device = resolve_device(args.device)
    start_processes(args.devices, args.num_nodes, device)
    out = distributed.main_first(start_run_folder, args.out, family)
    keys = (*keys, "devices", "num_nodes")
    return out, {"family": family, **options, **{key: getattr(args, key) for key in keys}}


def resume_run(args: argparse.Namespace, command: str, fit_run: Callable[..., int]) -> int:
    """``resume``: ``fit_run(args, out, options, resume=True)`` with the options the run in
    ``--out`` was started with (``--epochs`` raises their total); the values the out-of-memory
    message names (``args.memory_options``) are set on ``args`` from them. ``--devices`` and
    ``--num-nodes`` default to the run's (the global batch must stay the same)."""
    options = read_options(args.out, command)
    if args.epochs is not None:
        options["epochs"] = args.epochs
    for key in ("devices", "num_nodes"):
        given = getattr(args, key)
        options[key] = given if given is not None else options.get(key, 1)
    start_processes(options["devices"], options["num_nodes"], resolve_device(args.device))
    for option in args.memory_options:
        setattr(args, dest(option), options[dest(option)])
    return fit_run(args, check_writable_dir(args.out), options, resume=True)


def fit_run(
    args: argparse.Namespace, out: Path, options: dict[str, Any], model, data, *,
    device: torch.device, resume: bool, **fit_options: Any,
) -> tuple[History, float]:
    """Write ``options.json``, then ``fit`` ``model`` to ``data`` with the run's ``lr``,
    ``epochs`` and ``seed``, checkpoints in ``out`` and the options as ``config``; returns the
    history and the seconds this invocation took."""
    write_json(out / OPTIONS_FILE, options)
    started = time.perf_counter()
    history = fit(
        model, data, lr=options["lr"], epochs=options["epochs"], seed=options["seed"],
        device=device, checkpoint_dir=out, resume=resume, config=options,
        progress=progress_enabled(args), devices=options.get("devices", 1),
        num_nodes=options.get("num_nodes", 1), **fit_options,
    )
    return history, time.perf_counter() - started


def write_train_report(
    out: Path, options: dict[str, Any], device: torch.device, seconds: float, history: History,
    **results: Any,
) -> Path:
    """``out/train.json``: the command, options, device, seconds, ``results`` and history."""
    return write_json(out / "train.json", {
        "command": command_line(), "options": options, "device": str(device),
        "seconds_this_invocation": seconds, **results, "history": history.epochs,
    })


class OpenedCheckpoint(NamedTuple):
    device: torch.device
    out: Path | None
    options: dict[str, Any]
    model: Any


def open_checkpoint(
    args: argparse.Namespace, family: str, *, optional_out: bool = False
) -> OpenedCheckpoint:
    """``evaluate``'s and ``sample``'s checks, in order (``--device``, ``--out``, then
    ``--checkpoint`` written by ``pyrovae FAMILY train``) and the model loaded on the device.
    With ``optional_out`` an empty ``--out`` means no file."""
    device = resolve_device(args.device)
    out = None if optional_out and not args.out else check_writable_file(args.out)
    options = training_options(read_checkpoint(args.checkpoint), args.checkpoint, family)
    return OpenedCheckpoint(device, out, options,
                            load_checkpoint(args.checkpoint, map_location=device))


def nll_line(nll: float, stderr: float, num_samples: int, num_examples: int) -> str:
    """The printed line of an importance-sampled NLL (nats per image)."""
    return (f"test NLL {nll:.3f} ± {stderr:.3f} nats/image "
            f"(K={num_samples} importance samples, first {num_examples} images)")


def write_report(path: Path | None, args: argparse.Namespace, metrics: dict[str, Any]) -> None:
    """``evaluate --out``: the metrics as JSON with the command and checkpoint (and a line
    saying so); nothing without ``--out``."""
    if path:
        write_json(path, {"command": command_line(), "checkpoint": str(args.checkpoint),
                          **metrics})
        print(f"wrote {path}")


def write_samples(images: torch.Tensor, options: dict[str, Any], columns: int, out: Path,
                  what: str, **labels: Any) -> int:
    """``sample``'s end: ``images`` [N, D] as a PNG grid ``columns`` wide at ``out`` (the
    run's ``image_shape``: grey, or RGB for colour data; ``labels``: ``title``,
    ``row_labels``, ``col_labels``), a line saying ``what`` was written, exit status 0."""
    save_grid(images, tuple(options["image_shape"]), columns, out, **labels)
    print(f"wrote {what} to {out}")
    return 0


def add_evaluate_parser(
    actions, run: Callable[..., int], *, help: str, description: str, num_samples: int,
    test_size_help: str,
) -> argparse.ArgumentParser:
    """``evaluate``: the checkpoint, device and seed, ``--num-samples`` (default
    ``num_samples``), ``--eval-examples``, ``--test-size``, ``--out`` and the data options."""
    parser = actions.add_parser("evaluate", help=help, description=description)
    add_checkpoint_options(parser)
    parser.add_argument("--num-samples", type=non_negative_int, default=num_samples,
                        help=f"importance samples K for the NLL (default {num_samples}; "
                        "0 skips it)")
    parser.add_argument("--eval-examples", type=positive_int, default=1000,
                        help="test images for the NLL (default 1000)")
    parser.add_argument("--test-size", type=positive_int, default=None, help=test_size_help)
    parser.add_argument("--out", default=None, help="also write the metrics to this JSON file")
    add_data_options(parser)
    parser.set_defaults(run=run, memory_options=("--num-samples",))
    return parser


def add_sample_parser(
    actions, run: Callable[..., int], *, help: str, description: str, out: str,
    memory_options: tuple[str, ...],
) -> argparse.ArgumentParser:
    """``sample``: the checkpoint, device and seed and ``--out`` (default ``out``, a PNG)."""
    parser = actions.add_parser("sample", help=help, description=description)
    add_checkpoint_options(parser)
    parser.add_argument("--out", default=out, help=f"PNG file (default {out})")
    parser.set_defaults(run=run, memory_options=memory_options)
    return parser
