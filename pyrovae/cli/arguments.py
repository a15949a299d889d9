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

