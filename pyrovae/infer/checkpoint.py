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

**Loading a file never runs code from it.** A checkpoint holds plain values only: tensors,
numbers, strings, ``None``, and lists, tuples and dictionaries of them (`to_plain` converts
NumPy values and paths when saving; a user's own network in a model's config is stored as its
class name, and is passed back by the caller when loading). Files are read with
``torch.load(weights_only=True)``, whose unpickler refuses any other class or function; the
model is built only from a registry of known classes: pyrovae's models
([`known_model_classes`][]) and the classes the caller passes (``model_classes=``). The dotted class
name in the file is looked up, never imported.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import random
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions.constraints
import torch
from torch.distributions import constraints

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, corrupted, or not a pyrovae checkpoint."""


#: ``errno`` values of a write that found no room: a full disk, a file-size limit, a quota.
NO_ROOM = tuple(getattr(errno, name) for name in ("ENOSPC", "EFBIG", "EDQUOT")
                if hasattr(errno, name))


class DiskFullError(OSError):
    """A file could not be written for lack of room; the file at its path is unchanged."""

    def __str__(self) -> str:
        return (f"{self.strerror} while writing {self.filename}: the file there before is "
                "unchanged")


def no_room(err: BaseException | None) -> OSError | None:
    """The ``OSError`` of a full disk (or file-size limit, or quota) behind ``err``, if any:
    torch's zip writer re-raises one as a ``RuntimeError`` whose context it is."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_ROOM:
            return err
        err = err.__cause__ or err.__context__
    return None


def rng_state() -> dict[str, Any]:
    """The states of torch's (CPU and CUDA), Python's and NumPy's generators, as plain values
    (NumPy's key as a tensor, so that a checkpoint holds no NumPy object)."""
    name, key, position, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": (name, torch.from_numpy(key.astype(np.int64)), int(position), int(has_gauss),
                  float(cached)),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    name, key, *rest = state["numpy"]
    if isinstance(key, torch.Tensor):
        key = key.cpu().numpy().astype(np.uint32)
    np.random.set_state((name, key, *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place.

    Raises:
        DiskFullError: no room for the file (a full disk, a file-size limit, a quota); the
            file at ``path`` is unchanged and no temporary file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        full = no_room(err)
        if full is None:
            raise
        raise DiskFullError(full.errno, os.strerror(full.errno), str(path)) from err
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
    """``module.QualName`` of ``obj``'s class (of ``obj`` itself if it is a class)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


#: The key of the dictionary that stands for a user's own network in a saved model config.
NETWORK_MARKER = "pyrovae_user_network"
#: The key of the dictionary that stands for a distribution constraint (of a Pyro param).
CONSTRAINT_MARKER = "pyrovae_constraint"
_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device,
            torch.Size)


def to_plain(obj: Any, where: str = "value") -> Any:
    """``obj`` with every value a checkpoint can hold: tensors, numbers, strings, ``None``,
    torch dtypes and devices, and lists, tuples and dictionaries of them.

    NumPy arrays become tensors, NumPy scalars numbers, paths strings, sets sorted lists, named
    tuples tuples; an ``nn.Module`` (a user's network in a model's config) becomes
    ``{NETWORK_MARKER: its class}``, its weights being in the model's ``state_dict``.

    Raises:
        TypeError: any other object (named by ``where``), which only a full pickle could store.
    """
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, _SCALARS):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, torch.nn.Module):
        return {NETWORK_MARKER: class_path(obj)}
    if isinstance(obj, constraints.Constraint):  # a Pyro param store's constraints
        return {CONSTRAINT_MARKER: class_path(obj), "attributes": to_plain(vars(obj), where)}
    if isinstance(obj, Mapping):
        return {key: to_plain(value, f"{where}[{key!r}]") for key, value in obj.items()}
    if isinstance(obj, (set, frozenset)):  # a list in one order: a set's order varies by run
        return sorted((to_plain(value, where) for value in obj), key=repr)
    if isinstance(obj, (list, tuple)):
        plain = [to_plain(value, f"{where}[{i}]") for i, value in enumerate(obj)]
        return plain if isinstance(obj, list) else tuple(plain)
    raise TypeError(
        f"a checkpoint holds plain values only (tensors, numbers, strings, lists, dicts), and "
        f"{where} is a {class_path(obj)}; convert it to one of those first"
    )


def constraint_from_plain(value: Any) -> Any:
    """``value`` with each stored constraint (`to_plain`'s form) rebuilt; a class outside
    torch's and Pyro's constraint modules is a `CheckpointError`."""
    if isinstance(value, dict) and CONSTRAINT_MARKER in value:
        module_name, _, name = str(value[CONSTRAINT_MARKER]).rpartition(".")
        module = import_constraints(module_name)
        cls = getattr(module, name, None) if module is not None else None
        if not (isinstance(cls, type) and issubclass(cls, constraints.Constraint)):
            raise CheckpointError(f"a checkpoint names the constraint {value[CONSTRAINT_MARKER]!r}"
                                  ", which is not one of torch's or Pyro's")
        rebuilt = cls.__new__(cls)
        rebuilt.__dict__.update(constraint_from_plain(value.get("attributes", {})))
        return rebuilt
    if isinstance(value, dict):
        return {key: constraint_from_plain(item) for key, item in value.items()}
    return value


def import_constraints(name: str):
    """The constraint module ``name`` if it is torch's or Pyro's (never any other import)."""
    return {"torch.distributions.constraints": constraints,
            "pyro.distributions.constraints": pyro.distributions.constraints}.get(name)


def param_store_state(payload: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's Pyro param store (model and guide given as functions), constraints
    rebuilt, for ``pyro.get_param_store().set_state(...)``."""
    return constraint_from_plain(payload["param_store"])


def save_checkpoint(path: str | os.PathLike, module: torch.nn.Module | None, **extra: Any) -> Path:
    """Write ``module`` (class, ``config``, weights) and ``extra`` entries to ``path`` atomically.

    Every entry is stored as plain values ([`to_plain`][]), so the file loads without running
    code. A module without a ``config`` attribute (the keyword arguments that build it) is
    saved with its weights, but [`load_checkpoint`][] then cannot rebuild it.

    Raises:
        TypeError: an entry holds an object that is not a plain value (named in the message).
    """
    payload: dict[str, Any] = {"format": FORMAT_VERSION}
    if module is not None:
        payload["model_class"] = class_path(module)
        payload["model_config"] = getattr(module, "config", None)
        payload["model_state"] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    else:
        payload["param_store"] = pyro.get_param_store().get_state()
    payload.update(extra)
    payload = {key: to_plain(value, key) for key, value in payload.items()}
    payload["sha256"] = payload_digest(payload)
    return atomic_save(payload, path)


def _numpy_globals() -> list:
    """The NumPy functions and classes that rebuild an array: what checkpoints written before
    format 2 stored their NumPy random state with (they build arrays of numbers, nothing else).
    """
    multiarray = getattr(np, "_core", None)
    multiarray = multiarray.multiarray if multiarray is not None else np.core.multiarray
    allowed = [multiarray._reconstruct, np.ndarray, np.dtype]
    allowed += [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64)]
    return allowed


_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.<>]+)")


def _load_plain(path: Path, map_location: Any) -> Any:
    """``torch.load(weights_only=True)``: any pickled class or function other than tensors and
    plain containers (and NumPy arrays of old files) is refused before it is called."""
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if allow is None:
        return torch.load(path, map_location=map_location, weights_only=True)
    with allow(_numpy_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The raw checkpoint dictionary (tensors on ``map_location``), its digest verified.

    The file is read with ``torch.load(weights_only=True)``: it can hold only tensors, numbers,
    strings and containers, and nothing in it is executed.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        CheckpointError: the file is empty, truncated, corrupted (its contents do not match
            its digest), holds a pickled class or function (which is never called), or is not
            a pyrovae checkpoint; the one-line message names the path.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file: give one of the "
                              f"files in it, such as {path / 'last.pt'}")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    try:
        payload = _load_plain(path, map_location)
    except Exception as err:  # zip, pickle, EOF, refused class...: all mean an unusable file
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused:
            raise CheckpointError(
                f"checkpoint {path} holds a pickled {refused.group(1)}, which pyrovae never "
                "loads (loading it could run code): a pyrovae checkpoint holds only tensors, "
                "numbers, strings and containers"
            ) from None
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


def known_model_classes() -> dict[str, type]:
    """The registry of model classes a checkpoint may name: pyrovae's models, by the dotted
    name [`save_checkpoint`][] stores (``"pyrovae.models.vae.VAE"``)."""
    from pyrovae import models

    known = (models.PPCA, models.FactorAnalysis, models.ICA, models.NMF, models.VAE, models.M2,
             models.SketchRNN, models.SMILESVAE, models.CharRNN)
    return {class_path(cls): cls for cls in known}


def build_model(
    payload: dict[str, Any], model_classes: Iterable[type] = (),
    networks: Mapping[str, torch.nn.Module] | None = None, path: Any = "the checkpoint",
) -> torch.nn.Module:
    """Instantiate the checkpoint's model class from its config (weights not loaded).

    The class is looked up in pyrovae's registry ([`known_model_classes`][]) and ``model_classes``
    (the caller's own classes), never imported by name. ``networks`` gives back the user's own
    networks the model was built with (``{"encoder": MyEncoder(), ...}``, built as when saved;
    their weights come from the checkpoint).

    Raises:
        CheckpointError: the class is not a known one, a user network is not given, or the
            config does not build the class; one line naming ``path``.
    """
    name = payload.get("model_class")
    if name is None:
        raise ValueError(
            "this checkpoint holds a Pyro param store (a model/guide given as functions), not a "
            "module: use pyro.get_param_store().set_state(param_store_state(read_checkpoint(...)))"
        )
    config = payload.get("model_config")
    if config is None:
        raise ValueError(
            f"the checkpoint's model {name} has no 'config' attribute, so it "
            "cannot be rebuilt; give the class a `config` dict of its constructor arguments"
        )
    registry = {**_registry_of(model_classes), **known_model_classes()}
    cls = registry.get(name) if isinstance(name, str) else None
    if cls is None:
        raise CheckpointError(
            f"checkpoint {path} names the model class {name!r}, which is not one of pyrovae's "
            "models: if it is your own class, pass it as load_checkpoint(path, "
            "model_classes=[YourModel])"
        )
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise CheckpointError(f"checkpoint {path}: its model_config is not a dictionary of "
                              "keyword arguments")
    config = _with_networks(config, networks or {}, path, name)
    build = getattr(cls, "from_config", None)  # upgrades configs with old argument names
    try:
        return build(config) if build else cls(**config)
    except TypeError as err:  # unknown or missing keyword arguments
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path}: its model_config does not build {name}: {first}"
        ) from None


def _registry_of(classes: Iterable[type]) -> dict[str, type]:
    registry = {}
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            raise TypeError(f"model_classes holds {cls!r}, not an nn.Module class")
        registry[class_path(cls)] = cls
    return registry


def _with_networks(config: dict[str, Any], networks: Mapping[str, torch.nn.Module], path: Any,
                   name: str) -> dict[str, Any]:
    """``config`` with each saved user network marker replaced by ``networks[key]``."""
    wanted = {key: value[NETWORK_MARKER] for key, value in config.items()
              if isinstance(value, dict) and set(value) == {NETWORK_MARKER}}
    missing = {key: cls for key, cls in wanted.items() if key not in networks}
    if missing:
        listed = ", ".join(f"{key}: {cls}" for key, cls in missing.items())
        asked = ", ".join(f"{key!r}: ..." for key in missing)
        raise CheckpointError(
            f"checkpoint {path}'s {name.rsplit('.', 1)[-1]} was built with your own networks "
            f"({listed}): build them as before and pass load_checkpoint(path, "
            f"networks={{{asked}}})"
        )
    unknown = sorted(set(networks) - set(wanted))
    if unknown:
        raise ValueError(f"networks names {unknown}, which checkpoint {path}'s model was not "
                         f"built with (it was built with {sorted(wanted) or 'none'})")
    return {**config, **{key: networks[key] for key in wanted}}


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", *,
    model_classes: Iterable[type] = (), networks: Mapping[str, torch.nn.Module] | None = None,
) -> torch.nn.Module:
    """Rebuild the model saved at ``path``, load its weights, and return it in eval mode.

    Loading never runs code from the file: it holds plain values only, read with
    ``torch.load(weights_only=True)``, and the model is built from a class the caller knows.

    Args:
        path: a file written by [`pyrovae.fit`][] or [`save_checkpoint`][].
        map_location: where to put the weights (default ``"cpu"``).
        model_classes: your own model classes the file may name (pyrovae's models are always
            known), e.g. ``[MyVAE]``.
        networks: the networks you built the model with (``VAE(encoder=..., decoder=...)``),
            built afresh the same way, by config key: ``{"encoder": MyEncoder()}``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is unusable, or names a class that is not known; one line.
    """
    payload = read_checkpoint(path, map_location)
    module = build_model(payload, model_classes, networks, path=path)
    module = module.to(map_location if map_location is not None else "cpu")
    try:
        module.load_state_dict(payload["model_state"])
    except (KeyError, RuntimeError) as err:  # missing or mis-shaped weights
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path}: its weights do not fit its model: {first}"
                              ) from None
    return module.eval()
