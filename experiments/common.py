"""What every experiment shares: provenance, atomic JSON, the run options (--out, --threads,
--device, --devices, --num-nodes). Figures are in :mod:`experiments.figures`.

Library code returns values; these helpers are for the scripts that turn them into files.

Data-parallel runs (``--devices N``, ``--num-nodes M``): `start_run` launches the processes
before the script does anything else (the script runs again once per extra device, see
docs/scaling.md), guards ``--out`` on rank 0, and silences the other ranks (no prints, logging
of warnings and errors only). From then on `write_json`, `save_checkpoint` and
``experiments.figures.save_figure`` write on rank 0 only, so a script passes
``**parallel_options(args)`` to ``fit`` and, after it, does its evaluation only where
`evaluates` (rank 0). ``--batch-size`` stays per process: a step sees
``devices x num_nodes x batch_size`` examples.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pyrovae.infer import distributed


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | str | None = None) -> str:
    """One line naming the hardware and the software versions a number was measured with."""
    import pyro

    device = torch.device(device or "cpu")
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"
    )
    return f"{where}, torch {torch.__version__}, pyro {pyro.__version__}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def command_line() -> str:
    """The command as typed, for a ``python -m experiments...`` or a script path."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return " ".join(["python -m", spec.name, *sys.argv[1:]])
    return " ".join(["python", *sys.argv])


def provenance(device: torch.device | str | None = None) -> dict[str, Any]:
    """Command, commit, machine and date: stored beside every number a script writes."""
    return {
        "command": command_line(),
        "commit": git_commit(),
        "machine": machine(device),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN/inf: null, never a silently wrong number
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    return value


def is_main() -> bool:
    """True on rank 0 of a data-parallel run (and always in one process): it writes files."""
    return distributed.global_rank() == 0


#: A folder for tests: `evaluates` appends ``evaluates`` or ``skips`` to ``rank{R}`` there.
RANK_MARKERS_ENV = "EXPERIMENTS_RANK_MARKERS"


def evaluates() -> bool:
    """Whether this process does a script's work after ``fit`` (evaluation, figures, tables):
    rank 0 of a data-parallel run, the one process of any other run.

    The other ranks only help train. They take part in every ``fit`` (a collective: one they
    skipped would leave rank 0 waiting in it) and skip what comes between and after; ``fit``
    ends with a barrier, so rank 0's checkpoints exist when it returns. With
    ``$EXPERIMENTS_RANK_MARKERS`` set (tests), each call appends its answer to a file per rank.
    """
    main = is_main()
    markers = os.environ.get(RANK_MARKERS_ENV)
    if markers:
        with open(Path(markers) / f"rank{distributed.global_rank()}", "a") as file:
            file.write("evaluates\n" if main else "skips\n")
    return main


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON atomically; NaN and inf become ``null``. On rank 0
    only (`is_main`); the other ranks return the path."""
    path = Path(path)
    if not is_main():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # runs may share a summary file
    tmp.write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def save_checkpoint(path: str | os.PathLike, module, **extra: Any) -> Path:
    """``pyrovae.save_checkpoint`` on rank 0 only (the parameters are the same on every rank)."""
    from pyrovae import save_checkpoint as save

    return save(path, module, **extra) if is_main() else Path(path)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N (default: cuda when available, else cpu)",
    )


def resolve_device(name: str | None) -> torch.device:
    """The ``--device`` option as a ``torch.device``, with a one-line error for a bad one."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise SystemExit(f"error: unknown --device {name!r} ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"error: --device {name} asked for a GPU, but this torch "
            f"({torch.__version__}) sees no CUDA device; use --device cpu"
        )
    return device


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """``--devices`` and ``--num-nodes`` (default 1): data-parallel ``fit`` (docs/scaling.md)."""
    parser.add_argument(
        "--devices", type=_positive_int, default=1,
        help="processes per machine for data-parallel training, one per GPU with --device cuda "
        "(default 1); --batch-size is per process: a step sees devices x num-nodes x "
        "batch-size examples",
    )
    parser.add_argument("--num-nodes", type=_positive_int, default=1,
                        help="machines, each running --devices processes (default 1)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def parallel_options(args: argparse.Namespace) -> dict[str, int]:
    """``fit``'s ``devices`` and ``num_nodes`` from ``--devices``/``--num-nodes``."""
    return {"devices": getattr(args, "devices", 1), "num_nodes": getattr(args, "num_nodes", 1)}


def start_processes(args: argparse.Namespace, device: torch.device) -> int:
    """Launch (or join) the processes of ``--devices``/``--num-nodes`` (the script runs again
    in each); on ranks other than 0, nothing is printed and logging shows warnings and errors
    only. Returns this process's rank (0 without ``--devices``)."""
    options = parallel_options(args)
    if options["devices"] * options["num_nodes"] == 1:
        return 0
    if device.index is not None:
        raise SystemExit(f"error: --devices runs one process per GPU: give --device "
                         f"{device.type}, not {device}")
    with contextlib.suppress(ImportError):  # it sets its loggers' levels when imported
        import lightning_fabric  # noqa: F401
    logging.getLogger("lightning_fabric").setLevel(logging.WARNING)
    try:
        rank = distributed.start_processes(options["devices"], options["num_nodes"], device)
    except ImportError as err:
        raise SystemExit(f"error: {err}") from None
    if rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        logging.getLogger().setLevel(logging.WARNING)
    return rank


def add_run_arguments(parser: argparse.ArgumentParser, out: str, threads: int | None = None):
    """The options every script shares: ``--out`` (default ``out``, under ``runs/``),
    ``--threads`` (default ``threads``; None leaves torch's choice), ``--device``,
    ``--devices`` and ``--num-nodes``."""
    parser.add_argument("--out", type=Path, default=Path(out),
                        help="output folder (default %(default)s)")
    parser.add_argument("--threads", type=int, default=threads,
                        help="torch threads (default %(default)s: None is torch's choice)")
    parser.add_argument("--force-new", action="store_true",
                        help="start afresh even if --out holds a run with other options (the "
                        "old folder is moved aside to OUT.old-TIME)")
    add_device_argument(parser)
    add_parallel_arguments(parser)


def start_script(args: argparse.Namespace, log: bool = True) -> tuple[torch.device, Path]:
    """A script's start: INFO logging to stdout (``log``), ``--threads``, Pyro's validation off,
    the ``--out`` folder made; returns ``(device, out)``."""
    import pyro

    if log:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    pyro.enable_validation(False)
    device = start_run(args)
    out = Path(args.out)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
    return device, out


def start_run(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads``; start the ``--devices`` processes (see ``start_processes``); guard
    ``--out`` on rank 0 (see ``guard_run_folder``); return ``--device`` as a ``torch.device``
    (see ``resolve_device``)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    start_processes(args, device)
    distributed.main_first(
        guard_run_folder, args.out, vars(args), force_new=getattr(args, "force_new", False)
    )
    return device


RUN_OPTIONS_FILE = "run_options.json"
#: Options that say where or how long a run goes, not what it computes: they may change
#: between the invocations of one run (a resumed run on another device, with a new budget).
#: ``labels`` and ``seeds`` choose which sub-runs an invocation does (each in its own folder
#: ``labels{N}_seed{S}``; experiments.m2's summaries gather them across invocations).
NOT_COMPARED = frozenset(
    {"out", "threads", "device", "force_new", "max_minutes", "minutes", "labels", "seeds",
     "devices", "num_nodes"}
)


def _comparable(options: dict[str, Any], ignore) -> dict[str, Any]:
    mine = {k: v for k, v in options.items() if k not in ignore and not callable(v)}
    return json.loads(json.dumps(_jsonable(mine), default=str))


def guard_run_folder(
    out: str | os.PathLike, options: dict[str, Any], force_new: bool = False,
    ignore=NOT_COMPARED,
) -> Path:
    """Keep one run's outputs from mixing with another's in ``out``.

    The first start writes ``out/run_options.json`` (the options, less ``ignore``). A later
    start with identical options goes on (scripts resume from their checkpoints); with other
    options it stops with the list of differences, unless ``force_new``, which moves the old
    folder aside to ``OUT.old-YYYYmmdd-HHMMSS`` and starts afresh.

    Raises:
        SystemExit: ``out`` is a file, or holds a run with other options (without
            ``force_new``); a one-line message.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out} is a file, not a folder; choose a folder")
    mine = _comparable(options, ignore)
    path = out / RUN_OPTIONS_FILE
    if path.is_file():
        stored = read_json(path).get("options", {})
        keys = sorted(set(stored) | set(mine))
        differences = [
            f"{k}: {stored.get(k, '(unset)')!r} -> {mine.get(k, '(unset)')!r}"
            for k in keys if stored.get(k, "(unset)") != mine.get(k, "(unset)")
        ]
        if differences and not force_new:
            raise SystemExit(
                f"error: --out {out} holds a run started with other options "
                f"({'; '.join(differences)}); re-run with its options to resume it, choose "
                "another --out, or pass --force-new to start afresh (the old folder is moved "
                "aside)"
            )
    if force_new and out.is_dir() and any(out.iterdir()):
        aside = out.with_name(f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(out, aside)
        print(f"--force-new: moved the old {out} to {aside}", file=sys.stderr)
    if not path.is_file():
        write_json(path, {"options": mine, "command": command_line(),
                          "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
    return out
