"""What every experiment shares: provenance, atomic JSON, the run options (--out, --threads,
--device). Figures are in :mod:`experiments.figures`.

Library code returns values; these helpers are for the scripts that turn them into files.
"""

from __future__ import annotations

import argparse
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


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON atomically; NaN and inf become ``null``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # runs may share a summary file
    tmp.write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


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


def add_run_arguments(parser: argparse.ArgumentParser, out: str, threads: int | None = None):
    """The options every script shares: ``--out`` (default ``out``, under ``runs/``),
    ``--threads`` (default ``threads``; None leaves torch's choice) and ``--device``."""
    parser.add_argument("--out", type=Path, default=Path(out),
                        help="output folder (default %(default)s)")
    parser.add_argument("--threads", type=int, default=threads,
                        help="torch threads (default %(default)s: None is torch's choice)")
    add_device_argument(parser)


def start_script(args: argparse.Namespace, log: bool = True) -> tuple[torch.device, Path]:
    """A script's start: INFO logging to stdout (``log``), ``--threads``, Pyro's validation off,
    the ``--out`` folder made; returns ``(device, out)``."""
    import pyro

    if log:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    pyro.enable_validation(False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return start_run(args), out


def start_run(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads``; return ``--device`` as a ``torch.device`` (see ``resolve_device``)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)
