"""The ``pyrovae`` command: ``pyrovae [-v|-q] SUBCOMMAND ...`` (and ``--help`` everywhere).

One module per model family (``ppca``, ``vae``, ``m2``) or use of a checkpoint (``impute``),
each with ``add_parser(sub)`` that declares its options and sets ``run(args) -> exit status`` on
every leaf parser. Progress (one log line per epoch) is shown by default; ``-q`` shows errors
only, ``-v`` adds debug detail; both are accepted before or after the subcommand.

Every bad input the user can fix ends with one line ``pyrovae: error: ...`` on stderr and exit
status 2 (see ``docs/cli.md`` for the list); running out of memory names the option to lower.
Every fault while a command runs ends with one line too, never a traceback (``faults``): a
diverging loss, a full disk or an unforeseen error with exit status 1, Ctrl-C with 130; ``-v``
shows the traceback of an unforeseen error.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from pyrovae.cli import impute, m2, ppca, sketch, smiles, vae
from pyrovae.cli._common import OneLineParser, is_out_of_memory, out_of_memory_message
from pyrovae.cli.arguments import refuse_unused_options
from pyrovae.cli.faults import (
    INTERRUPTED,
    RUN_FAULT,
    disk_full_message,
    interrupted_message,
    unforeseen_message,
)
from pyrovae.infer.checkpoint import no_room
from pyrovae.infer.distributed import global_rank
from pyrovae.runs.launch import set_threads

SUBCOMMANDS = (ppca, vae, m2, impute, sketch, smiles)


def _verbosity(parser: argparse.ArgumentParser, default) -> None:
    """-v/-q on ``parser``; subparsers get ``SUPPRESS`` defaults so a flag given before the
    subcommand is not reset by the subparser."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_const", const=logging.DEBUG,
                       dest="log_level", default=default, help="log debugging detail too")
    group.add_argument("-q", "--quiet", action="store_const", const=logging.ERROR,
                       dest="log_level", default=default,
                       help="log errors only (no progress lines or bars)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="pyrovae", description="Deep latent-variable models as Pyro model/guide pairs."
    )
    _verbosity(parser, logging.INFO)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        parsers = module.add_parser(sub)
        for each in parsers if isinstance(parsers, list) else [parsers]:
            _verbosity(each, argparse.SUPPRESS)
    return parser


def _fail(message: str, status: int = 2) -> int:
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    if global_rank() == 0:  # under --devices every process fails alike: one line in all
        print(f"pyrovae: error: {first}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # -v: pyrovae's own debugging detail, not every library's (matplotlib's font search...)
    logging.basicConfig(level=max(args.log_level, logging.INFO),
                        format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("pyrovae").setLevel(args.log_level)
    set_threads(getattr(args, "threads", None))
    try:
        refuse_unused_options(args, sys.argv[1:] if argv is None else argv)
        return args.run(args)
    except KeyboardInterrupt:
        return _fail(interrupted_message(args), status=INTERRUPTED)
    except FloatingPointError as err:  # NonFiniteLossError: a fault of the run, not the input
        return _fail(f"{err}; try a lower --lr", status=RUN_FAULT)
    except Exception as err:
        return _fault(err, args)


def _fault(err: Exception, args: argparse.Namespace) -> int:
    """The one line (and exit status) of ``err``; an unforeseen error's traceback with -v."""
    full = no_room(err)
    if full is not None:  # before OSError's other kinds: a full disk is not a bad --out
        return _fail(disk_full_message(args, full), status=RUN_FAULT)
    if isinstance(err, (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)):
        return _fail(str(err))
    memory_errors = (torch.OutOfMemoryError, RuntimeError, MemoryError)
    if isinstance(err, memory_errors) and is_out_of_memory(err):
        return _fail(out_of_memory_message(args))
    if args.log_level <= logging.DEBUG:
        raise err
    return _fail(unforeseen_message(err), status=RUN_FAULT)


if __name__ == "__main__":
    sys.exit(main())
