"""The one-line messages of faults that happen while a command runs (not bad inputs): Ctrl-C,
a full disk, and an error pyrovae did not foresee. Each says what is left on disk and what to
do next; `pyrovae.cli.main` prints it as ``pyrovae: error: ...``.

Exit statuses (documented in ``docs/cli.md``): 2 for a bad input the user can fix, 1 for a
fault of the run (a diverging loss, a full disk, an unforeseen error), 130 for Ctrl-C (128 +
SIGINT, as shells report it).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

INTERRUPTED = 130
RUN_FAULT = 1
#: The subcommands whose ``--out`` is a run folder that ``resume`` continues.
RESUMABLE = ("train", "resume")


def _run_folder(args: argparse.Namespace) -> Path | None:
    """``--out`` of a ``vae``/``m2`` ``train``/``resume``: a run folder; else None."""
    if getattr(args, "action", None) in RESUMABLE and getattr(args, "out", None):
        return Path(args.out)
    return None


def _resume_hint(args: argparse.Namespace, out: Path) -> str:
    return f"'pyrovae {args.command} resume --out {shlex.quote(str(out))}'"


def interrupted_message(args: argparse.Namespace) -> str:
    """Ctrl-C: whether the run folder's checkpoints are there (they are written atomically, so
    an interrupted write leaves the one before), and the command that continues the run."""
    out = _run_folder(args)
    if out is None:
        return "interrupted (Ctrl-C)"
    if not (out / "last.pt").exists():
        return f"interrupted (Ctrl-C) before the first checkpoint: nothing to resume in {out}"
    return (f"interrupted (Ctrl-C); the checkpoints in {out} are intact: continue with "
            f"{_resume_hint(args, out)}")


def disk_full_message(args: argparse.Namespace, err: OSError) -> str:
    """No room to write a file: which file, that the one before is intact, how to go on."""
    where = f" while writing {err.filename}" if err.filename else ""
    what = f"no room on the disk ({err.strerror or err}){where}"
    out = _run_folder(args)
    if out is None:
        return f"{what}; free some space and run the command again"
    if not (out / "last.pt").exists():
        return f"{what}; no checkpoint was written in {out}: free some space and start again"
    return (f"{what}; the checkpoints already in {out} are intact: free some space, then "
            f"continue with {_resume_hint(args, out)}")


def unforeseen_message(err: BaseException) -> str:
    """An error pyrovae has no message for: its type and first line, and how to see more."""
    text = str(err).strip()
    first = text.splitlines()[0][:300] if text else ""
    return (f"unexpected {type(err).__name__}{': ' + first if first else ''} (run again with -v "
            "for the traceback, and please report it)")
