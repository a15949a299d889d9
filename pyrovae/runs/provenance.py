"""Where a number came from, and how it is written: the command, the commit, the machine and the
date beside every number (`provenance`), and atomic, strict JSON (`write_json`: NaN and inf
become ``null``) written on rank 0 only.

The ``pyrovae`` command and the ``experiments/`` scripts both write through these, so a
``train.json`` and a ``metrics.json`` name their command and machine the same way.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
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


def machine_description(device: torch.device | str | None = None) -> dict[str, Any]:
    """Where a number was measured: platform, CPU, CPU count, torch threads and version, GPU."""
    device = torch.device(device or "cpu")
    return {
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def machine(device: torch.device | str | None = None) -> str:
    """`machine_description` as one line, with Pyro's version."""
    import pyro

    about = machine_description(device)
    where = about["cuda"] or (f"{about['processor']}, {about['cpu_count']} cores, "
                              f"{about['torch_threads']} torch thread(s)")
    return f"{where}, torch {about['torch']}, pyro {pyro.__version__}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def command_line(program: str | None = None) -> str:
    """The command as typed: ``program ARGS`` (the command line passes ``"pyrovae"``),
    ``python -m MODULE ARGS`` for a script run as a module, ``python SCRIPT ARGS`` otherwise."""
    args = [shlex.quote(a) for a in sys.argv[1:]]
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if program:
        return " ".join([program, *args])
    if spec is not None and spec.name:
        return " ".join(["python -m", spec.name, *args])
    return " ".join(["python", shlex.quote(sys.argv[0]), *args])


def provenance(
    device: torch.device | str | None = None, program: str | None = None
) -> dict[str, Any]:
    """Command (see `command_line`), commit, machine and date: stored beside every number."""
    return {
        "command": command_line(program),
        "commit": git_commit(),
        "machine": machine(device),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: tensors and NumPy scalars as numbers, paths as strings,
    NaN and inf as ``None`` (strict JSON has neither: null, never a silently wrong number)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return jsonable(value.tolist())
    if hasattr(value, "item") and callable(value.item):  # NumPy scalars
        return jsonable(value.item())
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
    """Write ``payload`` as indented JSON atomically (a temporary file, then a rename); NaN and
    inf become ``null``, other unknown objects their ``str``. On rank 0 only (`is_main`); the
    other ranks return the path."""
    path = Path(path)
    if not is_main():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # runs may share a summary file
    tmp.write_text(json.dumps(jsonable(payload), indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def save_checkpoint(path: str | os.PathLike, module, **extra: Any) -> Path:
    """``pyrovae.save_checkpoint`` on rank 0 only (the parameters are the same on every rank)."""
    from pyrovae import save_checkpoint as save

    return save(path, module, **extra) if is_main() else Path(path)
