"""argparse types for values that a plain ``int`` or ``str`` lets through but the run cannot use:
each refuses with exit status 2 and one line naming the option (argparse adds its name)."""

from __future__ import annotations

import argparse

#: NumPy's generator (seeded with Pyro's seed) takes 32-bit seeds only.
MAX_SEED = 2**32 - 1


def seed(text: str) -> int:
    """argparse type: an integer seed in ``0..2**32 - 1``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_SEED} (2**32 - 1), got {value}")
    return value


#: Options that only some settings use, by ``(command, action)``: ``(option, used(args), when)``.
#: Given with another setting, such an option would be ignored without a word.
USED_ONLY_WITH = {
    ("vae", "train"): [
        ("--sigma", lambda args: args.likelihood == "gaussian", "--likelihood gaussian"),
        ("--image-size", lambda args: args.dataset == "celeba", "--dataset celeba"),
    ],
    ("impute", None): [
        ("--num-samples", lambda args: args.method == "importance", "--method importance"),
        ("--num-sweeps", lambda args: args.method != "importance",
         "--method pseudo_gibbs or metropolis_gibbs"),
    ],
    **{(family, "evaluate"): [
        ("--eval-examples", lambda args: args.num_samples > 0, "--num-samples above 0"),
    ] for family in ("vae", "m2")},
}


def given_options(argv: list[str]) -> set[str]:
    """The long options written in ``argv`` (``--name`` or ``--name=value``), as typed: argparse
    also takes unambiguous abbreviations, which `refuse_unused_options` matches by prefix."""
    return {token.split("=", 1)[0] for token in argv if token.startswith("--")}


def refuse_unused_options(args: argparse.Namespace, argv: list[str]) -> None:
    """Raise ``ValueError`` for an option given where the command would ignore it."""
    rules = USED_ONLY_WITH.get((args.command, getattr(args, "action", None)), [])
    given = given_options(argv)
    for option, used, when in rules:
        typed = any(option == name or (len(name) > 3 and option.startswith(name))
                    for name in given)
        if typed and not used(args):
            raise ValueError(f"{option} is used with {when} only; here it would be ignored: "
                             "drop it")
