"""Checkpoints: everything needed to resume a run or to reload a model for evaluation.

A checkpoint is one ``torch.save`` file holding the model's class and the configuration that
built it, its weights, the optimiser state, the random-number generators' states, the epoch and
step, the training configuration and the metrics so far. Files are written atomically (a
temporary file in the same folder, then ``os.replace``), so a crash mid-write never leaves a
half-written checkpoint behind.

Format 2 (this version) adds ``"sha256"``: a SHA-256 digest of the payload's contents (every
tensor's dtype, shape and bytes, every other value's pickle, in order), checked when the file is
read, so a truncated, empty, garbage or bit-flipped file is a one-line [`CheckpointError`][]
naming the path rather than a raw zip or pickle error. Format 1 files (no digest) still load.
The file stays a plain ``torch.save`` of a dictionary.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, corrupted, or not a pyrovae checkpoint."""


def rng_state() -> dict[str, Any]:
    """The states of torch's (CPU and CUDA), Python's and NumPy's generators."""
    state = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def keep_previous(path: str | os.PathLike, previous: str | os.PathLike) -> Path | None:
    """Make ``previous`` a copy of ``path`` (a hard link where possible), atomically.

    Called before ``path`` is overwritten, so the checkpoint before it survives a bad write.
    ``path`` itself is never missing meanwhile. Returns ``previous``, or None if there was no
    ``path``.
    """
    path, previous = Path(path), Path(previous)
    if not path.is_file():
        return None
    tmp = previous.with_name(f".{previous.name}.{os.getpid()}.tmp")
    try:
        if tmp.exists():
            tmp.unlink()
        try:
            os.link(path, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(path, tmp)
        os.replace(tmp, previous)
    finally:
        if tmp.exists():
            tmp.unlink()
    return previous


def payload_digest(payload: dict[str, Any]) -> str:
    """SHA-256 of a payload's contents, independent of the device its tensors are on."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in payload.items() if k != "sha256"})
    return digest.hexdigest()


def _feed(digest, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        data = obj.detach().cpu().contiguous()
        digest.update(f"T{data.dtype}{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        digest.update(f"A{obj.dtype}{obj.shape}".encode())
        digest.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            _feed(digest, key)
            _feed(digest, value)
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{type(obj).__name__}{len(obj)}".encode())
        for value in obj:
            _feed(digest, value)
    elif isinstance(obj, torch.nn.Module):
        # A user's own network in a model's config: its pickle is not byte-stable across a
        # save and load (hooks, storages), its class and weights are.
        digest.update(f"M{class_path(obj)}".encode())
        _feed(digest, dict(obj.state_dict()))
    else:
        digest.update(pickle.dumps(obj, protocol=4))


def class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def save_checkpoint(path: str | os.PathLike, module: torch.nn.Module | None, **extra: Any) -> Path:
    """Write ``module`` (class, ``config``, weights) and ``extra`` entries to ``path`` atomically.

    A module without a ``config`` attribute (the keyword arguments that build it) is saved with its
    weights, but [`load_checkpoint`][] then cannot rebuild it.
    """
    payload: dict[str, Any] = {"format": FORMAT_VERSION}
    if module is not None:
        payload["model_class"] = class_path(module)
        payload["model_config"] = getattr(module, "config", None)
        payload["model_state"] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    else:
        payload["param_store"] = pyro.get_param_store().get_state()
    payload.update(extra)
    payload["sha256"] = payload_digest(payload)
    return atomic_save(payload, path)


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The raw checkpoint dictionary (tensors on ``map_location``), its digest verified.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        CheckpointError: the file is empty, truncated, corrupted (its contents do not match
            its digest) or not a pyrovae checkpoint; the one-line message names the path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # zip, pickle, EOF, unknown class...: all mean an unusable file
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} cannot be read (truncated or corrupted?): "
            f"{type(err).__name__}{': ' + reason if reason else ''}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{path} is not a pyrovae checkpoint (format {FORMAT_VERSION})")
    if payload["format"] >= 2 and payload.get("sha256") != payload_digest(payload):
        raise CheckpointError(
            f"checkpoint {path} is corrupted: its contents do not match its sha256 digest"
        )
    return payload


def build_model(payload: dict[str, Any]) -> torch.nn.Module:
    """Instantiate the checkpoint's model class from its config (weights not loaded)."""
    if "model_class" not in payload:
        raise ValueError(
            "this checkpoint holds a Pyro param store (a model/guide given as functions), not a "
            "module: use read_checkpoint() and pyro.get_param_store().set_state(...)"
        )
    if payload.get("model_config") is None:
        raise ValueError(
            f"the checkpoint's model {payload['model_class']} has no 'config' attribute, so it "
            "cannot be rebuilt; give the class a `config` dict of its constructor arguments"
        )
    module_name, _, qualname = payload["model_class"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), qualname)
    build = getattr(cls, "from_config", None)  # upgrades configs with old argument names
    return build(payload["model_config"]) if build else cls(**payload["model_config"])


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> torch.nn.Module:
    """Rebuild the model saved at ``path``, load its weights, and return it in eval mode.

    Args:
        path: a file written by [`pyrovae.fit`][] or [`save_checkpoint`][].
        map_location: where to put the weights (default ``"cpu"``).
    """
    payload = read_checkpoint(path, map_location)
    module = build_model(payload).to(map_location if map_location is not None else "cpu")
    module.load_state_dict(payload["model_state"])
    return module.eval()
