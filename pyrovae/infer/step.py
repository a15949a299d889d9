"""One training step: the loss over every stream's batch, backward, clip, optimiser step.

The epoch loop in [`pyrovae.infer.trainer`][] knows a step only through the [`Step`][]
protocol: ``loss = step(tensors, batches)`` returns the step's loss as a detached tensor on the
device (no host sync), ``step.optimizer`` is what checkpoints save, ``step.set_lr(lr)`` applies
the schedule, and ``step.data_plates`` (None until the first call) holds the data plate each
stream's model run used on the first call, for [`check_subsampling`][]. [`make_step`][]
builds the eager step; a compiled (CUDA-graph) step or a data-parallel one plugs in by
returning another object with the same members.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from .checkpoint import rng_state, set_rng_state
from .importance import is_data_frame
from .options import LossOptions
from .precision import autocast_networks
from .streams import Stream

Tensors = tuple[torch.Tensor | None, ...]


class SubsampleWarning(UserWarning):
    """The model's data plate does not follow the ``subsample`` indices ``fit`` gave it."""


class ModelPair:
    """The model and guide to train, and the parameters the optimiser owns."""

    def __init__(self, model: Any, guide: Any) -> None:
        if isinstance(model, type):
            raise TypeError(
                f"fit got the class {model.__name__}, not a model: build one first, "
                f"e.g. fit({model.__name__}(...), data)"
            )
        if guide is None:
            if not (hasattr(model, "model") and hasattr(model, "guide")):
                raise ValueError("give a module with .model and .guide methods, or a guide=")
            self.module, self.model, self.guide = model, model.model, model.guide
        else:
            self.module = model if isinstance(model, torch.nn.Module) else None
            self.model, self.guide = model, guide

    def parameters(self) -> list[torch.nn.Parameter]:
        params = list(self.module.parameters()) if self.module is not None else []
        seen = {id(p) for p in params}
        for _, p in pyro.get_param_store().named_parameters():
            if id(p) not in seen:
                params.append(p)
                seen.add(id(p))
        return params

    def create_params(self, tensors: Tensors, idx: torch.Tensor) -> None:
        """Run the guide and model once so that their ``pyro.param`` sites exist.

        Parameters made by ``pyro.param`` in model/guide *functions* exist only after a first
        run. The run draws its initial values from the current seed and leaves the random
        number generators as it found them, so training starts from the same state either way.
        """
        saved = rng_state()
        with poutine.block(), poutine.trace(param_only=True):
            guide_trace = poutine.trace(self.guide).get_trace(*tensors, subsample=idx)
            poutine.replay(self.model, trace=guide_trace)(*tensors, subsample=idx)
        set_rng_state(saved)

    def describe(self) -> dict[str, Any]:
        """The architecture, for comparing a resumed run with its checkpoint."""
        if self.module is not None:
            cls = type(self.module)
            return {
                "class": f"{cls.__module__}.{cls.__qualname__}",
                "config": getattr(self.module, "config", None),
            }
        return {"model": _qualname(self.model), "guide": _qualname(self.guide)}


def _qualname(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


class Step(Protocol):
    """What the epoch loop needs of a training step."""

    optimizer: torch.optim.Optimizer
    data_plates: list | None

    def __call__(self, tensors: Sequence[Tensors], batches: Sequence[torch.Tensor]) -> torch.Tensor:
        """One optimiser step on ``batches[i]`` of ``tensors[i]``; the loss, detached."""

    def set_lr(self, lr: float) -> None:
        """Use learning rate ``lr`` from now on."""


class EagerStep:
    """A step as plain PyTorch autograd around a Pyro objective's ``differentiable_loss``.

    With ``precision="bf16"`` the loss is computed under bfloat16 autocast with float32
    network outputs ([`pyrovae.infer.precision`][]); backward and the optimiser step are float32.

    The loss is the sum over streams of ``objective.differentiable_loss(model, guide, *tensors,
    subsample=idx)``, each already scaled by N/M by the model's data plate. With ``validate=
    "first"`` Pyro's checks follow its global setting on this step's first call only.

    Data-parallel training (`.distributed`) sets two hooks: ``weights`` (one factor per
    stream for the next call, None for 1: a shard's share of the global batch; a stream with
    an empty shard is skipped) and ``reduce_gradients`` (called with the parameters after
    backward, before clipping: the all-reduce).
    """

    def __init__(
        self,
        pair: ModelPair,
        objective: Any,
        optimizer: torch.optim.Optimizer,
        *,
        clip_norm: float | None,
        validate: bool | str,
        jit: bool,
        precision: str = "fp32",
    ) -> None:
        self.objective, self.optimizer = objective, optimizer
        self.precision, self.module = precision, pair.module
        self.clip_norm, self.validate, self.jit = clip_norm, validate, jit
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.pair_model, self._recorder = pair.model, None
        self.model, self.guide = self._run_model, pair.guide
        if jit:  # JIT takes tensors positionally
            self.model, self.guide = _positional(self.model), _positional(self.guide)
        self.calls = 0
        self.data_plates: list | None = None
        self.weights: Sequence[float] | None = None
        self.reduce_gradients: Callable[[list], None] | None = None

    def loss(
        self, tensors: Sequence[Tensors], batches: Sequence[torch.Tensor], record: bool = False
    ) -> torch.Tensor:
        """The differentiable loss summed over the streams.

        With ``record``, each stream's model run notes its data plate in ``self.data_plates``.
        """
        weights = self.weights if self.weights is not None else [1] * len(batches)
        total = None
        if record:
            self.data_plates = []
        for t, idx, w in zip(tensors, batches, weights, strict=True):
            if idx.numel() == 0:  # an empty shard (data-parallel): nothing to add
                if record:
                    self.data_plates.append(None)
                continue
            self._recorder = _DataPlateRecorder() if record else None
            try:
                term = self._loss_of(t, idx)
            finally:
                if record:
                    self.data_plates.append(self._recorder.frame)
                self._recorder = None
            term = term if w == 1 else term * w
            total = term if total is None else total + term
        if total is None:  # no rows on this rank at this step: no gradient to contribute
            return torch.zeros((), device=batches[0].device, requires_grad=True)
        return total

    def _loss_of(self, tensors: Tensors, idx: torch.Tensor) -> torch.Tensor:
        if self.jit:
            return self.objective.differentiable_loss(self.model, self.guide, *tensors, idx)
        return self.objective.differentiable_loss(self.model, self.guide, *tensors, subsample=idx)

    def _run_model(self, *args, **kwargs):
        # One function object for every call: JIT objectives compile once per model identity.
        if self._recorder is None:
            return self.pair_model(*args, **kwargs)
        with self._recorder:
            return self.pair_model(*args, **kwargs)

    def __call__(self, tensors: Sequence[Tensors], batches: Sequence[torch.Tensor]) -> torch.Tensor:
        autocast = autocast_networks(self.module, batches[0].device, self.precision)
        with pyro.validation_enabled(self._validation()), autocast:
            loss = self.loss(tensors, batches, record=self.calls == 0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.reduce_gradients is not None:
            self.reduce_gradients(self.params)
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.optimizer.step()
        self.calls += 1
        return loss.detach()

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _validation(self) -> bool:
        if self.validate == "first":
            return self.calls == 0 and pyro.infer.util.is_validation_enabled()
        return bool(self.validate)


def make_step(
    pair: ModelPair, options: LossOptions, objective: Any, optimizer: torch.optim.Optimizer,
    clip_norm: float | None,
) -> Step:
    """The training step ``fit`` runs: a [`CompiledFitStep`][] with ``compiled``, else an
    [`EagerStep`][]."""
    if options.compiled:
        return CompiledFitStep(pair, objective, optimizer, clip_norm=clip_norm,
                               validate=options.validate)
    return EagerStep(
        pair, objective, optimizer, clip_norm=clip_norm, validate=options.validate,
        jit=options.jit, precision=options.precision,
    )


class CompiledFitStep:
    """``fit``'s step with ``compiled=True``: a [`CompiledStep`][infer.compiled.CompiledStep]
    (a CUDA graph on CUDA, eager on the CPU) around a graph-safe objective.

    Checkpoints save `CompiledStep.state_dict` (float learning rates, ``capturable`` off),
    so a compiled run resumes an eager one and the other way round. The subsampling check is
    skipped (``data_plates`` stays None): the captured step records no trace.

    Data-parallel: ``reduce_gradients`` is the compiled step's (run between its two graphs on
    CUDA); ``weights`` must be 1 (equal shards, which ``drop_last`` gives when every stream
    has at least one global batch of rows): a graph cannot take a new weight every step.
    """

    def __init__(
        self, pair: ModelPair, objective: Any, optimizer: torch.optim.Optimizer, *,
        clip_norm: float | None, validate: bool | str,
    ) -> None:
        from .compiled import CompiledStep

        model, guide = pair.model, pair.guide

        def loss_of(tensors: Tensors, idx: torch.Tensor) -> torch.Tensor:
            return objective.differentiable_loss(model, guide, *tensors, subsample=idx)

        self.compiled = CompiledStep(loss_of, optimizer, clip_norm=clip_norm)
        self.optimizer, self.validate = optimizer, validate
        self.checkpoint_state = self.compiled  # state_dict/load_state_dict for checkpoints
        self.data_plates: list | None = None
        self.calls = 0

    @property
    def reduce_gradients(self) -> Callable[[list], None] | None:
        return self.compiled.reduce_gradients

    @reduce_gradients.setter
    def reduce_gradients(self, reduce: Callable[[list], None] | None) -> None:
        self.compiled.reduce_gradients = reduce

    @property
    def weights(self) -> Sequence[float] | None:
        return None

    @weights.setter
    def weights(self, weights: Sequence[float] | None) -> None:
        if weights is not None and any(w != 1 for w in weights):
            raise ValueError(
                f"compiled=True trains data-parallel on equal shards only, but a step's shards "
                f"have weights {list(weights)}: every stream needs at least devices x "
                "batch_size rows"
            )

    def __call__(self, tensors: Sequence[Tensors], batches: Sequence[torch.Tensor]) -> torch.Tensor:
        first = self.calls == 0
        checks = (
            first and pyro.infer.util.is_validation_enabled()
            if self.validate == "first"
            else bool(self.validate) and not self.compiled.graph
        )
        with pyro.validation_enabled(checks):
            loss = self.compiled(tensors, batches)
        self.calls += 1
        return loss.clone()  # the static buffer is overwritten by the next replay

    def set_lr(self, lr: float) -> None:
        self.compiled.set_lr(lr)


def _positional(fn: Callable) -> Callable:
    """``fn(*tensors, subsample=idx)`` as ``f(*tensors, idx)``."""

    def call(*args):
        *tensors, idx = args
        return fn(*tensors, subsample=idx)

    return call


class _DataPlateRecorder(Messenger):
    """Notes the data plate (the plate at ``dim=-1``) of the sample sites it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.frame = None

    def _pyro_post_sample(self, msg) -> None:
        if self.frame is None and not site_is_subsample(msg):
            self.frame = next((f for f in msg["cond_indep_stack"] if is_data_frame(f)), None)


def check_subsampling(
    streams: Sequence[Stream], data_plates: Sequence[Any], batches: Sequence[torch.Tensor]
) -> None:
    """Warn when a model's data plate ignores the ``subsample`` indices it was given.

    ``data_plates[i]`` is the data plate frame seen in the model's run on ``batches[i]`` of
    stream ``i`` (None: no sample site in a plate at ``dim=-1``, nothing to check). For a batch
    smaller than its stream, the plate must have the batch's size M and the stream's full size
    N, so that each site is scaled by N/M: a plate over all N rows means every step sees the
    whole data; a plate of size M without ``size=N`` leaves the minibatch loss unscaled.
    """
    for stream, frame, idx in zip(streams, data_plates, batches, strict=True):
        batch = idx.numel()
        if frame is None or batch >= stream.size:
            continue
        full = frame.full_size if frame.full_size is not None else frame.size
        if frame.size != batch or full != stream.size:
            warnings.warn(
                f"data stream '{stream.name}': the model's data plate '{frame.name}' has "
                f"{frame.size} rows of {full}, but fit gave it a batch of {batch} rows of "
                f"{stream.size}; build the plate as pyro.plate(name, size=N, subsample="
                "subsample) (pyrovae.models.data_plate) and select the rows it returns, so "
                "each step uses the batch and scales it by N/M",
                SubsampleWarning,
                stacklevel=4,
            )
