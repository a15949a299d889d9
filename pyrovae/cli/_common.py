"""What every ``pyrovae`` subcommand shares: its options (``--device``, ``--threads``,
``--seed``, ``--data-root``), the one-line messages for faults the user can fix, and the
plumbing of the model families' ``train``/``resume``/``evaluate``/``sample`` (``train.json``,
checkpoints, their parsers). The device, the processes, the run folders, provenance, JSON and
each family's training loop come from the run layer (`pyrovae.runs`), which the experiments
share.

Every message a user sees for a bad input is a `UsageError` (the run layer's `RunError`, or an
argparse error), which `pyrovae.cli.main` prints as one line ``pyrovae: error: ...`` with exit
status 2.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from pyrovae.cli import arguments
from pyrovae.infer import History, distributed, load_checkpoint
from pyrovae.infer.checkpoint import class_path, read_checkpoint
from pyrovae.plots import save_image_grid
from pyrovae.runs import curves, folder
from pyrovae.runs.data import COLOUR_DATASETS, channels_first
from pyrovae.runs.launch import (
    RunError,
    add_device_options,
    add_parallel_options,
    non_negative_int,
    positive_float,
    positive_int,
    resolve_device,
    start_processes,
)
from pyrovae.runs.provenance import command_line, write_json

#: The program name written into reports' ``command``.
PROGRAM = "pyrovae"

logger = logging.getLogger(__name__)


#: A bad option or input the user can fix: printed as one line, exit status 2.
UsageError = RunError


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line naming the command and the fix."""

    def error(self, message: str):  # noqa: D401 - argparse's API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_device_seed(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--threads`` and ``--seed``."""
    add_device_options(parser)
    parser.add_argument("--seed", type=arguments.seed, default=0, help="seed (default 0)")


def where(args: argparse.Namespace) -> dict[str, Any]:
    """Where the data come from: ``--data-root`` and ``--no-download`` as loaders' keywords."""
    return dict(root=args.data_root, download=not args.no_download)


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


def add_train_basics(parser: argparse.ArgumentParser, out: str, epochs: int | None) -> None:
    """``--epochs`` (unless ``epochs`` is None: the family declares it), ``--batch-size``,
    ``--lr``, ``--out`` and the device, seed, data options."""
    if epochs is not None:
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
    out = f"runs/{command}"  # where `train` puts a run by default
    parser.add_argument("--out", default=out, help=f"the run folder to continue (default {out})")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="new total number of epochs (default: the run's)")
    add_device_options(parser)
    add_parallel_options(parser, default=None)
    add_data_options(parser)
    parser.set_defaults(run=functools.partial(resume_run, command=command, fit_run=fit_run),
                        memory_options=memory_options)
    return parser


def add_checkpoint_parser(
    actions, name: str, run: Callable[..., int], memory_options: tuple[str, ...], *,
    checkpoint: str, **texts: str
) -> argparse.ArgumentParser:
    """``pyrovae FAMILY NAME`` reading ``--checkpoint`` (default ``checkpoint``: the one
    ``train`` writes with its default ``--out``), with the device and seed options."""
    parser = actions.add_parser(name, **texts)
    parser.add_argument("--checkpoint", default=checkpoint,
                        help="a checkpoint written by train (RUN/last.pt or RUN/best.pt; "
                        f"default {checkpoint})")
    add_device_seed(parser)
    parser.set_defaults(run=run, memory_options=memory_options)
    return parser


def add_defaulted(parser: argparse.ArgumentParser, defaults: dict[str, Any], option: str,
                  type: Callable[[str], Any] | None, help: str, note: str = "",
                  **kwargs: Any) -> None:
    """``option`` with its value in ``defaults``, the help ending ``(default VALUE NOTE)``."""
    default = defaults[dest(option)]
    parser.add_argument(option, type=type, default=default,
                        help=f"{help} (default {default}{note})", **kwargs)


def training_options(checkpoint: dict[str, Any], path: str | os.PathLike, family: str,
                     script_model: type | None = None) -> dict:
    """The CLI options stored in a checkpoint by ``train``; a clear error for another file.

    With ``script_model``, a checkpoint of that class written by an experiment script is
    accepted too: a script stores its ``vars(args)`` as ``{"args": ...}`` and no family, and its
    option names are the command line's."""
    options = (checkpoint.get("fit_config") or {}).get("user") or {}
    script_args = options.get("args")
    if (script_model is not None and "family" not in options and isinstance(script_args, dict)
            and checkpoint.get("model_class") == class_path(script_model)):
        return {**script_args, "family": family}
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
    out = distributed.main_first(folder.start_run_folder, args.out, family)
    keys = (*keys, "devices", "num_nodes")
    return out, {"family": family, **options, **{key: getattr(args, key) for key in keys}}


def resume_run(args: argparse.Namespace, command: str, fit_run: Callable[..., int]) -> int:
    """``resume``: ``fit_run(args, out, options, resume=True)`` with the options the run in
    ``--out`` was started with (``--epochs`` raises their total); the values the out-of-memory
    message names (``args.memory_options``) are set on ``args`` from them. ``--devices`` and
    ``--num-nodes`` default to the run's (the global batch must stay the same)."""
    options = folder.read_options(args.out, command)
    if args.epochs is not None:
        options["epochs"] = args.epochs
    for key in ("devices", "num_nodes"):
        given = getattr(args, key)
        options[key] = given if given is not None else options.get(key, 1)
    start_processes(options["devices"], options["num_nodes"], resolve_device(args.device))
    distributed.main_first(folder.lock_run_folder, args.out)
    for option in args.memory_options:
        setattr(args, dest(option), options[dest(option)])
    with folder.releasing(args.out):
        return fit_run(args, Path(args.out), options, resume=True)


def write_train_report(
    out: Path, options: dict[str, Any], device: torch.device, seconds: float, history: History,
    **results: Any,
) -> Path:
    """``out/train.json``: the command, options, device, seconds, ``results`` and history;
    and the history as ``out/metrics.csv`` and ``out/curve.png`` (`pyrovae.runs.curves`)."""
    dataset = options.get("dataset")
    curves.write_curves(out, history.epochs, f"pyrovae {options['family']} train"
                        + (f" on {dataset}" if dataset else ""))
    return write_json(out / "train.json", {
        "command": command_line(PROGRAM), "options": options, "device": str(device),
        "seconds_this_invocation": seconds, **results, "history": history.epochs,
    })


class OpenedCheckpoint(NamedTuple):
    device: torch.device
    out: Path | None
    options: dict[str, Any]
    model: Any


def open_checkpoint(
    args: argparse.Namespace, family: str, *, optional_out: bool = False, out_dir: bool = False,
    script_model: type | None = None,
) -> OpenedCheckpoint:
    """``evaluate``'s and ``sample``'s checks, in order (``--device``, ``--out``, then
    ``--checkpoint`` written by ``pyrovae FAMILY train``, or by a script for ``script_model``,
    see `training_options`) and the model loaded on the device.
    With ``optional_out`` an empty ``--out`` means no file; with ``out_dir`` it is a folder."""
    device = resolve_device(args.device)
    if out_dir:
        out = folder.check_writable_dir(args.out)
    else:
        out = None if optional_out and not args.out else folder.check_output_file(
            args.out, inputs={"--checkpoint": args.checkpoint})
    options = training_options(read_checkpoint(args.checkpoint), args.checkpoint, family,
                               script_model)
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
        write_json(path, {"command": command_line(PROGRAM), "checkpoint": str(args.checkpoint),
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
    test_size_help: str, checkpoint: str,
) -> argparse.ArgumentParser:
    """``evaluate``: the checkpoint, device and seed, ``--num-samples`` (default
    ``num_samples``), ``--eval-examples``, ``--test-size``, ``--out`` and the data options."""
    parser = add_checkpoint_parser(actions, "evaluate", run, ("--num-samples",), help=help,
                                   description=description, checkpoint=checkpoint)
    parser.add_argument("--num-samples", type=non_negative_int, default=num_samples,
                        help=f"importance samples K for the NLL (default {num_samples}; "
                        "0 skips it)")
    parser.add_argument("--eval-examples", type=positive_int, default=1000,
                        help="test images for the NLL (default 1000)")
    parser.add_argument("--test-size", type=positive_int, default=None, help=test_size_help)
    parser.add_argument("--out", default=None, help="also write the metrics to this JSON file")
    add_data_options(parser)
    return parser


def add_sample_parser(
    actions, run: Callable[..., int], *, help: str, description: str, out: str,
    memory_options: tuple[str, ...], checkpoint: str,
) -> argparse.ArgumentParser:
    """``sample``: the checkpoint, device and seed and ``--out`` (default ``out``, a PNG)."""
    parser = add_checkpoint_parser(actions, "sample", run, memory_options, help=help,
                                   description=description, checkpoint=checkpoint)
    parser.add_argument("--out", default=out, help=f"PNG file (default {out})")
    return parser


def save_grid(images: torch.Tensor, image_shape: tuple[int, ...], columns: int,
              path: str | os.PathLike, **labels: Any) -> Path:
    """Tile ``images`` [N, D] (values in [0, 1]) into a grid ``columns`` wide; save a PNG,
    upscaled and labelled by [`pyrovae.plots.save_image_grid`][] (``labels``: ``title``,
    ``row_labels``, ``col_labels``).

    ``image_shape`` is ``(H, W)`` or ``(1, H, W)`` for grey images and ``(3, H, W)`` for colour
    ones, flattened channel-major.
    """
    channels, _, _ = channels_first(image_shape)
    if channels not in (1, 3):
        raise ValueError(f"a grid shows grey or RGB images, got {channels} channels")
    return save_image_grid(path, images.detach().float().cpu().clamp(0, 1), image_shape,
                           nrow=columns, **labels)
