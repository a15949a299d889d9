"""The run-folder policy: what a run folder owns, who may write into it, and which paths a
command may write at all.

* A run folder owns every file a run writes (`RUN_FILES`: checkpoints, reports, figures). A new
  run refuses a folder holding any of them (`start_run_folder`); ``options.json`` alone marks a
  start that failed before its first checkpoint, and may be started again.
* One process at a time: `lock_run_folder` takes an advisory lock (``fcntl.flock``) on
  ``.lock`` in the folder for the life of the process, so a second process training into the
  same folder refuses with one line; the operating system releases the lock when the process
  ends, however it ends.
* A script's run may be resumed by running it again: `guard_run_folder` stores its options in
  ``run_options.json`` and refuses other options (unless ``force_new`` moves the old folder
  aside).
* No output names an input (`check_output_file`): ``evaluate --out RUN/last.pt`` never replaces
  the model it reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pyrovae.runs.launch import RunError
from pyrovae.runs.provenance import command_line, jsonable, read_json, write_json

logger = logging.getLogger(__name__)

OPTIONS_FILE = "options.json"
RUN_OPTIONS_FILE = "run_options.json"
LOCK_FILE = ".lock"
CHECKPOINTS = ("last.pt", "previous.pt", "best.pt")
#: What a run writes besides ``options.json``: checkpoints, reports, figures.
RUN_FILES = (*CHECKPOINTS, "train.json", "metrics.json", "metrics.csv", "report.json",
             RUN_OPTIONS_FILE)
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def check_writable_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Create the folder ``path`` (and its parents) and prove a file can be written in it.

    Called before any training, so a bad ``--out`` never costs a run.

    Raises:
        RunError: ``path`` is empty, is a file, lies under a file, or is not writable.
    """
    if not str(path).strip():  # Path("") is the current folder
        raise RunError(f"{option} is empty; give a folder")
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is" if parent == path else f"lies under {parent}, which is"
            raise RunError(f"{option} {path} {where} a file, not a folder; choose a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".pyrovae-write-test-"):
            pass
    except OSError as err:
        raise RunError(
            f"{option} {path} is not writable ({err.strerror or err}); choose another folder"
        ) from None
    return path


def check_output_file(
    path: str | os.PathLike, option: str = "--out", inputs: dict[str, Any] | None = None
) -> Path:
    """A file to write: not a folder, not an existing checkpoint, not one of ``inputs``
    (option -> path the command reads), in a writable folder (created)."""
    if not str(path).strip():
        raise RunError(f"{option} is empty; give a file name")
    path = Path(path)
    if path.is_dir():
        raise RunError(f"{option} {path} is a folder; give a file name such as samples.png")
    for name, given in (inputs or {}).items():
        if given is not None and path.exists() and path.resolve() == Path(given).resolve():
            raise RunError(f"{option} {path} is the {name} this command reads; writing it would "
                           "replace it: choose another file")
    if path.suffix == ".pt" and path.exists():
        raise RunError(f"{option} {path} is a checkpoint; writing it would replace the model: "
                       "choose another file")
    check_writable_dir(path.parent if str(path.parent) else Path("."), option)
    if path.exists() and not os.access(path, os.W_OK):
        raise RunError(f"{option} {path} is not writable; choose another file")
    return path


def run_files(out: str | os.PathLike) -> list[str]:
    """The files in ``out`` that a run wrote (`RUN_FILES` and figures), sorted."""
    out = Path(out)
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir()
                  if p.name in RUN_FILES or p.suffix in FIGURE_SUFFIXES)


def start_run_folder(out: str | os.PathLike, command: str) -> Path:
    """``--out`` for a new run of ``pyrovae COMMAND train``: writable, locked for this process,
    and holding no file of an earlier run (which ``resume`` continues)."""
    out = check_writable_dir(out)
    lock_run_folder(out)
    found = run_files(out)
    if found:
        raise RunError(
            f"--out {out} already holds a run ({', '.join(found)}): continue it with "
            f"'pyrovae {command} resume --out {out}', or choose another --out"
        )
    return out


def read_options(out: str | os.PathLike, command: str) -> dict[str, Any]:
    """The options a run in ``out`` was started with (``options.json``)."""
    path = Path(out) / OPTIONS_FILE
    if not path.is_file():
        raise RunError(
            f"--out {out} holds no {command} run to resume ({path} is missing); start one with "
            f"'pyrovae {command} train --out {out}'"
        )
    check_writable_dir(out)
    try:
        options = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise RunError(f"{path} is not the JSON that train writes ({err})") from None
    found = options.get("family") if isinstance(options, dict) else None
    if found != command:
        if found not in ("vae", "m2"):
            raise RunError(f"{path} names no run of 'pyrovae {command} train' to resume")
        raise RunError(f"--out {out} holds a run of 'pyrovae {found} train', not of 'pyrovae "
                       f"{command} train': continue it with 'pyrovae {found} resume --out "
                       f"{out}'")
    return options


# ---------------------------------------------------------------------------------- the lock
_held: dict[Path, int] = {}  # folder -> descriptor, open for the life of the process


def lock_run_folder(out: str | os.PathLike) -> Path:
    """Hold an advisory lock on ``out/.lock`` until this process ends (the operating system
    releases it on exit, on a crash and on SIGKILL alike); a second holder is refused.

    Raises:
        RunError: another process holds the folder (the message names its pid).
    """
    out = Path(out)
    key = out.resolve()
    if key in _held:
        return out
    descriptor = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise RunError(f"--out {out} is in use by another process (pid {holder}); wait for it "
                       "to finish, or choose another --out") from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    _held[key] = descriptor
    return out


def unlock_run_folder(out: str | os.PathLike) -> None:
    """Release `lock_run_folder`'s lock before the process ends (a command run in-process, a
    folder moved aside)."""
    descriptor = _held.pop(Path(out).resolve(), None)
    if descriptor is not None:
        with contextlib.suppress(OSError):
            os.close(descriptor)


@contextlib.contextmanager
def releasing(out: str | os.PathLike):
    """Release ``out``'s lock when the block ends (a command called in-process, e.g. by a test
    or a notebook, leaves the folder free for the next)."""
    try:
        yield Path(out)
    finally:
        unlock_run_folder(out)


# ---------------------------------------------------------------------------------- scripts' runs
#: Options that say where or how long a run goes, not what it computes: they may change
#: between the invocations of one run (a resumed run on another device, with a new budget;
#: ``evaluate_partial`` says only whether a stopped run is evaluated).
#: ``n_labelled`` and ``seeds`` choose which sub-runs an invocation does (each in its own folder
#: ``labels{N}_seed{S}``; experiments.m2's summaries gather them across invocations).
NOT_COMPARED = frozenset(
    {"out", "threads", "device", "force_new", "max_minutes", "minutes", "n_labelled", "seeds",
     "devices", "num_nodes", "evaluate_partial"}
)


def _comparable(options: dict[str, Any], ignore) -> dict[str, Any]:
    mine = {k: v for k, v in options.items() if k not in ignore and not callable(v)}
    return json.loads(json.dumps(jsonable(mine), default=str))


def guard_run_folder(
    out: str | os.PathLike, options: dict[str, Any], force_new: bool = False,
    ignore=NOT_COMPARED, lock: bool = True,
) -> Path:
    """Keep one run's outputs from mixing with another's in ``out`` (a script's run).

    The first start writes ``out/run_options.json`` (the options, less ``ignore``). A later
    start with identical options goes on (scripts resume from their checkpoints); with other
    options it stops with the list of differences, unless ``force_new``, which moves the old
    folder aside to ``OUT.old-YYYYmmdd-HHMMSS`` and starts afresh. With ``lock`` the folder is
    locked for this process (`lock_run_folder`).

    Raises:
        RunError: ``out`` is a file, holds a run with other options (without ``force_new``),
            or is in use by another process.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a folder; choose a folder")
    mine = _comparable(options, ignore)
    path = out / RUN_OPTIONS_FILE
    if path.is_file():
        # ``ignore`` applies to the stored options too: a key added to it later is not compared
        stored = {k: v for k, v in read_json(path).get("options", {}).items() if k not in ignore}
        keys = sorted(set(stored) | set(mine))
        differences = [
            f"{k}: {stored.get(k, '(unset)')!r} -> {mine.get(k, '(unset)')!r}"
            for k in keys if stored.get(k, "(unset)") != mine.get(k, "(unset)")
        ]
        if differences and not force_new:
            raise RunError(
                f"--out {out} holds a run started with other options "
                f"({'; '.join(differences)}); re-run with its options to resume it, choose "
                "another --out, or pass --force-new to start afresh (the old folder is moved "
                "aside)"
            )
    if force_new and out.is_dir() and any(out.iterdir()):
        if lock:
            lock_run_folder(out)  # never move a folder another process is writing
            unlock_run_folder(out)
        aside = out.with_name(f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(out, aside)
        logger.warning("--force-new: moved the old %s to %s", out, aside)
    out.mkdir(parents=True, exist_ok=True)
    if lock:
        lock_run_folder(out)
    if not path.is_file():
        write_json(path, {"options": mine, "command": command_line(),
                          "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
    return out
