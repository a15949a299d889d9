"""One SVI training step (loss, backward, optimiser step) replayed as a CUDA graph.

Launching the few hundred small kernels of a VAE step one by one from Python costs more than
running them: a 784-400-20 VAE epoch took 1.35 s with ``JitTrace_ELBO`` on an H100 and 0.18 s
as a CUDA graph of the same step. [`CompiledStep`][] captures the whole step once per static
shape and replays it:

* the minibatch indices are copied into static device buffers (device to device: the
  permutation already lives on the device) before each replay;
* the loss is a graph-safe objective ([`pyrovae.infer.graph_safe`][], or pyrovae's IWAE), so
  nothing in it reads a value back to the host;
* the optimiser is Adam/AdamW with ``capturable=True`` and its learning rate a device tensor,
  so learning-rate changes reach the graph (the step writes new values into that tensor);
* the loss is written into a static device tensor that the caller copies or reads (e.g. a NaN
  check every ``sync_every`` steps);
* Pyro's sample sites draw their noise from the default CUDA generator, which CUDA graphs
  support: capture registers the generator and every replay advances its Philox offset, so
  each replay draws fresh noise. Optional dynamic binarisation draws
  ``x_batch ~ Bernoulli(grey levels)`` inside the step from the same generator.

On a CPU (or with ``graph=False``) the same object runs the same steps eagerly, with the same
arithmetic: that is what the CPU tests check against a plain ``loss.backward();
optimizer.step()`` loop.

Capture needs: Pyro's validation off inside the captured step (it reads values; the warm-up
steps run with the caller's setting), a model that reads no tensor value on the host (pyrovae's
VAE and PPCA; M2's labelled batches check their labels on the host, see the tests), and static
tensor shapes (one graph per distinct set of batch shapes, e.g. a last short batch).
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyro
import torch
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

LossOf = Callable[[tuple, torch.Tensor], torch.Tensor]


class ScalarConstantsOnDevice(TorchFunctionMode):
    """Create 0-d constants from Python numbers with a fill kernel instead of a host copy.

    ``torch.tensor(1.0, device="cuda")`` or ``torch.as_tensor`` of a number (which
    ``torch.distributions`` calls for every Python number argument, e.g. ``Normal(loc, 1.0)``)
    copies from host memory and synchronises, which CUDA graph capture refuses (PyTorch releases
    before the fix of pytorch/pytorch#168991).
    Inside this mode such calls become ``torch.full((), value, dtype=..., device=...)``, the
    same value made by a kernel that a graph can record.

    Args:
        device_type: the device type whose constants are rewritten (default ``"cuda"``).
    """

    def __init__(self, device_type: str = "cuda") -> None:
        super().__init__()
        self.device_type = device_type

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (
            func in (torch.tensor, torch.as_tensor)
            and len(args) == 1
            and set(kwargs) <= {"dtype", "device"}
        ):
            value, device = args[0], kwargs.get("device")
            if (
                isinstance(value, numbers.Number)
                and device is not None
                and torch.device(device).type == self.device_type
            ):
                dtype = kwargs.get("dtype") or torch.tensor(value).dtype
                return torch.full((), value, dtype=dtype, device=device)
        return func(*args, **kwargs)


def make_capturable_optimizer(
    params: Sequence[torch.Tensor], lr: float, name: str = "adam", **options
) -> torch.optim.Optimizer:
    """Adam or AdamW for [`CompiledStep`][]: on CUDA ``capturable=True, fused=True`` with the
    learning rate a device tensor; elsewhere as ``fit`` builds it (fused where possible).

    Args:
        params: the parameters (all on one device).
        lr: learning rate.
        name: ``"adam"`` (default) or ``"adamw"``.
        **options: other keyword arguments of the optimiser (betas, weight_decay...).
    """
    classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if name not in classes:
        raise ValueError(f"a capturable optimizer is one of {sorted(classes)}, got {name!r}")
    params = list(params)
    devices = {p.device for p in params}
    if len(devices) != 1:
        raise ValueError(f"parameters must share one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type == "cuda":
        lr_tensor = torch.tensor(float(lr), dtype=torch.float32, device=device)
        return classes[name](params, lr=lr_tensor, capturable=True, fused=True, **options)
    fused = device.type == "cpu" and all(p.is_floating_point() for p in params)
    return classes[name](params, lr=lr, fused=fused or None, **options)


@dataclass
class _Slot:
    """Static buffers (and the graph, once captured) for one set of batch shapes."""

    indices: list[torch.Tensor]
    loss: torch.Tensor
    calls: int = 0
    graph: torch.cuda.CUDAGraph | None = None
    update: torch.cuda.CUDAGraph | None = None  # with reduce_gradients: the second graph


class CompiledStep:
    """A training step ``step(tensors, batches) -> loss``: a CUDA graph on CUDA, eager elsewhere.

    Each call performs one optimiser step (or K steps, see below) on the minibatches ``batches``
    of the streams' ``tensors``::

        loss = sum_i loss_of(tensors[i], batches[i])
        optimizer.zero_grad(set_to_none=True); loss.backward()
        clip_grad_norm_(params, clip_norm)            # if clip_norm is given
        optimizer.step()

    With ``graph`` on, the first ``warmup_steps`` calls for a set of batch shapes run eagerly on a
    side stream (they are real steps), the next one captures the step in a ``CUDAGraph`` and every
    later call only copies the indices into static buffers and replays it.

    Several steps per graph: give every stream's batch as a [K, B] tensor (row j the indices of
    step j); one call then performs K steps in one replay and returns the K losses [K].

    Learning rate: assign ``group["lr"] = value`` as usual (or call [`set_lr`][]); in graph mode
    the next call writes the value into the device tensor the graph reads and puts that tensor
    back into the group. Resume: ``optimizer.load_state_dict`` (or [`load_state_dict`][]) before
    or between calls is detected (the optimiser's state is a new object) and the step re-captures.
    Checkpoints: [`state_dict`][] is the optimiser's state with the learning rate as a float and
    ``capturable`` off, loadable by an eager run too.

    Args:
        loss_of: ``loss_of(tensors, idx) -> 0-d loss`` for one stream: e.g.
            ``lambda t, idx: objective.differentiable_loss(model, guide, *t, subsample=idx)``
            with a graph-safe objective (``make_objective(..., graph_safe=True)``).
        optimizer: the optimiser; in graph mode Adam or AdamW (any ``capturable`` optimiser),
            e.g. from [`make_capturable_optimizer`][]. Its groups are switched to
            ``capturable=True`` with a device learning rate.
        clip_norm: clip the gradient's global norm to this value (default: none).
        graph: capture a CUDA graph (default: when the parameters are on a CUDA device).
        warmup_steps: eager steps per set of batch shapes before capture (default 3, >= 1: the
            optimiser's state and cuBLAS workspaces are created outside the capture).
        binarize: stream numbers whose first tensor holds grey levels in [0, 1]: each step
            replaces its batch rows by a Bernoulli draw (dynamic binarisation on the device)
            before the loss reads them (default: none).
        per_stream: call ``loss_of(tensors[i], batches[i])`` per stream and add (default True);
            with False, one call ``loss_of(tensors, batches)`` with all streams (for a loss that
            couples them, such as the benchmarks' plain M2).
        reduce_gradients: called with the parameters after backward and before clipping, to
            change their ``.grad`` in place (data-parallel training's all-reduce, which sets
            it; default none). In graph mode it runs on the host between two replayed graphs
            (loss and backward; clip and optimiser step), so a collective is never captured;
            it must then read nothing back to the host, and one call is one step (1-D
            batches).

    Attributes:
        loss: the static loss buffer of the last call (overwritten by the next call of the same
            shapes; copy it to keep it).
    """

    def __init__(
        self,
        loss_of: LossOf,
        optimizer: torch.optim.Optimizer,
        *,
        clip_norm: float | None = None,
        graph: bool | None = None,
        warmup_steps: int = 3,
        binarize: Sequence[int] = (),
        per_stream: bool = True,
        reduce_gradients: Callable[[list], None] | None = None,
    ) -> None:
        self.loss_of, self.optimizer, self.clip_norm = loss_of, optimizer, clip_norm
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        if not self.params:
            raise ValueError("the optimizer has no parameters")
        self.device = self.params[0].device
        self.graph = self.device.type == "cuda" if graph is None else bool(graph)
        if self.graph:
            if self.device.type != "cuda":
                raise ValueError(f"graph=True needs parameters on a CUDA device, not {self.device}")
            if "capturable" not in optimizer.defaults:
                raise ValueError(
                    f"{type(optimizer).__name__} cannot be captured in a CUDA graph: use Adam or "
                    "AdamW (make_capturable_optimizer)"
                )
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"warmup_steps must be an integer >= 1, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps
        self.binarize = frozenset(int(i) for i in binarize)
        self.per_stream = bool(per_stream)
        self.reduce_gradients = reduce_gradients
        self.loss: torch.Tensor | None = None
        self._slots: dict[tuple, _Slot] = {}
        self._bound: list[list[torch.Tensor | None]] | None = None
        self._owned: set[tuple[int, int]] = set()
        self._binary: dict[int, torch.Tensor] = {}
        self._state_seen = None
        self._lr: list[torch.Tensor] = []

    # ------------------------------------------------------------------ the step
    def __call__(self, tensors: Sequence[tuple], batches: Sequence[torch.Tensor]) -> torch.Tensor:
        """One step (K steps for [K, B] batches); returns the static loss buffer (0-d or [K])."""
        if len(tensors) != len(batches):
            raise ValueError(f"{len(tensors)} streams of tensors but {len(batches)} batches")
        self._adopt_optimizer()
        data = self._bind(tensors)
        key = tuple(tuple(b.shape) for b in batches)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._new_slot(batches)
            self._slots[key] = slot
        for buffer, batch in zip(slot.indices, batches, strict=True):
            buffer.copy_(batch, non_blocking=True)
        self.loss = slot.loss
        if not self.graph:
            self._steps(slot, data)
        elif slot.graph is not None:
            self._replay(slot)
        elif slot.calls < self.warmup_steps:
            self._warmup(slot, data)
        else:
            self._capture(slot, data)
            self._replay(slot)
        slot.calls += 1
        return slot.loss

    def _new_slot(self, batches) -> _Slot:
        shapes = {b.shape[0] for b in batches if b.dim() == 2}
        if (
            any(b.dim() not in (1, 2) for b in batches)
            or len(shapes) > 1
            or (shapes and any(b.dim() == 1 for b in batches))
        ):
            raise ValueError(
                "batches must all be 1-D index tensors [B_i] (one step) or all [K, B_i] (K steps)"
            )
        if shapes and self.graph and self.reduce_gradients is not None:
            raise ValueError("with reduce_gradients, a graph holds one step: give 1-D batches")
        indices = [torch.empty(b.shape, dtype=torch.long, device=self.device) for b in batches]
        dtype = self.params[0].dtype
        loss = torch.zeros(tuple(shapes), dtype=dtype, device=self.device)
        return _Slot(indices=indices, loss=loss)

    def _steps(self, slot: _Slot, data) -> None:
        num_steps = slot.loss.shape[0] if slot.loss.dim() else 1
        for j in range(num_steps):
            self._loss_and_backward(slot, data, j)
            if self.reduce_gradients is not None:
                self.reduce_gradients(self.params)
            self._update()

    def _loss_and_backward(self, slot: _Slot, data, j: int) -> None:
        idx = [buffer if buffer.dim() == 1 else buffer[j] for buffer in slot.indices]
        streams = [
            self._binarized(i, stream, batch) if i in self.binarize else stream
            for i, (stream, batch) in enumerate(zip(data, idx, strict=True))
        ]
        if self.per_stream:
            loss = sum(self.loss_of(s, b) for s, b in zip(streams, idx, strict=True))
        else:
            loss = self.loss_of(streams, idx)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        (slot.loss[j] if slot.loss.dim() else slot.loss).copy_(loss.detach())

    def _update(self) -> None:
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.optimizer.step()

    def _binarized(self, i: int, stream: tuple, idx: torch.Tensor) -> tuple:
        grey = stream[0]
        binary = self._binary.get(i)
        if binary is None or binary.shape != grey.shape:
            binary = self._binary[i] = torch.zeros_like(grey)
        binary.index_copy_(0, idx, torch.bernoulli(grey.index_select(0, idx)))
        return (binary, *stream[1:])

    def _warmup(self, slot: _Slot, data) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            self._steps(slot, data)
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _capture(self, slot: _Slot, data) -> None:
        logger.debug("capturing a CUDA graph for batch shapes %s", [b.shape for b in slot.indices])
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with _capturing(graph, self.device.type):
            if self.reduce_gradients is None:
                self._steps(slot, data)
            else:  # the collective runs between two graphs: loss and backward, then the update
                self._loss_and_backward(slot, data, 0)
        if self.reduce_gradients is not None:
            # Give every parameter the .grad tensor the update graph will read (the values are
            # not yet computed; every rank captures at the same call, so the collective matches).
            self.reduce_gradients(self.params)
            update = torch.cuda.CUDAGraph()
            with _capturing(update, self.device.type):
                self._update()
            slot.update = update
        slot.graph = graph

    def _replay(self, slot: _Slot) -> None:
        slot.graph.replay()
        if slot.update is not None:
            self.reduce_gradients(self.params)
            slot.update.replay()

    # ------------------------------------------------------------------ static inputs
    def _bind(self, tensors: Sequence[tuple]) -> list[tuple]:
        """The tensors the graphs read: the caller's own while they stay the same objects;
        when one is replaced (new data every epoch), a static copy the graphs read instead."""
        if self._bound is None or len(self._bound) != len(tensors):
            self._bound = [list(stream) for stream in tensors]
            self._owned.clear()
            self._drop_graphs()
            return [tuple(stream) for stream in self._bound]
        for i, stream in enumerate(tensors):
            bound = self._bound[i]
            if len(stream) != len(bound):
                raise ValueError(f"stream {i} has {len(stream)} tensors, before {len(bound)}")
            for j, t in enumerate(stream):
                if t is bound[j]:
                    continue
                if (i, j) in self._owned and t is not None and t.shape == bound[j].shape:
                    bound[j].copy_(t, non_blocking=True)
                    continue
                if not self.graph:
                    bound[j] = t
                    continue
                # Tensors the graphs read moved: own a static copy from now on, re-capture once.
                bound[j] = None if t is None else t.clone()
                if t is not None:
                    self._owned.add((i, j))
                self._drop_graphs()
        return [tuple(stream) for stream in self._bound]

    # ------------------------------------------------------------------ optimiser
    def _adopt_optimizer(self) -> None:
        if not self.graph:
            return
        if self.optimizer.state is not self._state_seen:
            # First call, or load_state_dict replaced the state the graphs read.
            self._drop_graphs()
            for group in self.optimizer.param_groups:
                group["capturable"] = True
                for p in group["params"]:
                    step = self.optimizer.state.get(p, {}).get("step")
                    if isinstance(step, torch.Tensor) and step.device != p.device:
                        self.optimizer.state[p]["step"] = step.to(p.device, torch.float32)
            self._lr = [
                torch.zeros((), dtype=torch.float32, device=self.device)
                for _ in self.optimizer.param_groups
            ]
            for tensor, group in zip(self._lr, self.optimizer.param_groups, strict=True):
                _write_lr(tensor, group["lr"])
                group["lr"] = tensor
            self._state_seen = self.optimizer.state
        for tensor, group in zip(self._lr, self.optimizer.param_groups, strict=True):
            if group["lr"] is not tensor:  # the caller assigned a new learning rate
                _write_lr(tensor, group["lr"])
                group["lr"] = tensor

    def set_lr(self, lr: float | Sequence[float]) -> None:
        """Set every group's learning rate (or one value per group); no host sync."""
        values = [lr] * len(self.optimizer.param_groups) if isinstance(lr, numbers.Number) else lr
        for group, value in zip(self.optimizer.param_groups, values, strict=True):
            group["lr"] = float(value)
        self._adopt_optimizer()

    def state_dict(self) -> dict:
        """The optimiser's ``state_dict`` with float learning rates and ``capturable`` off (one
        host sync per group), loadable by an eager or a compiled run."""
        state = self.optimizer.state_dict()
        for group in state["param_groups"]:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"] = float(group["lr"])
            if "capturable" in group:
                group["capturable"] = False
        return state

    def load_state_dict(self, state: dict) -> None:
        """Load an optimiser state (from [`state_dict`][] or ``optimizer.state_dict()``)."""
        self.optimizer.load_state_dict(state)
        self._adopt_optimizer()

    def _drop_graphs(self) -> None:
        for slot in self._slots.values():
            slot.graph, slot.update, slot.calls = None, None, 0


@contextlib.contextmanager
def _capturing(graph: torch.cuda.CUDAGraph, device_type: str):
    """Capture into ``graph``: Pyro's validation off, constants made on the device."""
    with (
        pyro.validation_enabled(False),
        ScalarConstantsOnDevice(device_type),
        torch.cuda.graph(graph),
    ):
        yield


def _write_lr(tensor: torch.Tensor, value) -> None:
    if isinstance(value, torch.Tensor):
        tensor.copy_(value, non_blocking=True)
    else:
        tensor.fill_(float(value))
