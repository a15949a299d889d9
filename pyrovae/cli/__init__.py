"""The ``pyrovae`` command: ``pyrovae [-v|-q] SUBCOMMAND ...`` (and ``--help`` everywhere).

One module per subcommand (today :mod:`pyrovae.cli.ppca`), each with ``add_parser(sub)`` that
declares its options and sets ``run(args) -> exit status``. ``-v``/``-q`` are accepted before
or after the subcommand.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pyrovae.cli import ppca

SUBCOMMANDS = (ppca,)


def _verbosity(parser: argparse.ArgumentParser, default) -> None:
    """-v/-q on ``parser``; subparsers get ``SUPPRESS`` defaults so a flag given before the
    subcommand is not reset by the subparser."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_const", const=logging.INFO,
                       dest="log_level", default=default, help="log training progress")
    group.add_argument("-q", "--quiet", action="store_const", const=logging.ERROR,
                       dest="log_level", default=default, help="log errors only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyrovae", description="Deep latent-variable models as Pyro model/guide pairs."
    )
    _verbosity(parser, logging.WARNING)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        _verbosity(module.add_parser(sub), argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"pyrovae: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
