"""A fresh Pyro param store for the duration of a block: how modules keep their own parameters."""

from __future__ import annotations

import contextlib

import pyro
import torch


def param_scope(module: torch.nn.Module | None):
    """A fresh Pyro param store for the duration of a block, when training a module.

    ``PyroModule`` parameters pass through Pyro's global param store, where a stale entry of the
    same name (from an earlier model) would replace the module's own. Inside this scope the store
    starts empty, so the module uses exactly its own parameters. Model/guide *functions* keep
    their ``pyro.param`` values in the global store, so for them this does nothing.
    """
    return pyro.get_param_store().scope() if module is not None else contextlib.nullcontext()
