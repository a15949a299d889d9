"""Seconds per training epoch on one device: pyrovae eager, JIT and compiled step; plain PyTorch
eager and as a CUDA graph; optionally NumPyro (a whole epoch under ``jit``).

Workloads (as ``benchmarks/run_benchmarks.py``): the VAE 784-400-20 with batch 128 on 60000
binary images; M2 with 100 labels and 10000 unlabelled images per epoch (batches 200 + 100);
PPCA K=10 with batch 1000 on 60000 grey images. Every variant of a workload starts from the same
weights; batches are drawn from a device-side permutation each epoch and the last short batch is
dropped, so every variant sees static shapes and the same number of steps. Pyro's validation is
off. Each time is the median over the timed epochs after one untimed warm-up epoch (which holds
JIT compilation and graph capture). ``--data synthetic`` (default) uses random images of MNIST's
shape and pixel mean, so the script needs no data files on the accelerator machine; ``--data
mnist`` reads MNIST from ``--data-root``.

Variants: ``pyrovae_eager`` (Pyro's objective, ``fit``'s loop), ``pyrovae_jit`` (Pyro's
``Jit*`` objective), ``pyrovae_compiled`` (:class:`pyrovae.infer.compiled.CompiledStep` with the
graph-safe objective: a CUDA graph on CUDA, eager on CPU), ``plain_eager`` and ``plain_graph``
(``benchmarks/plain_models.py``'s twins, the latter through the same ``CompiledStep``).

Usage (from the repository root)::

    python -m benchmarks.gpu.run --device cpu --quick --out runs/bench_gpu_smoke   # CPU smoke
    python -m benchmarks.gpu.run --device cuda --numpyro --out runs/bench_gpu      # on a GPU

On the accelerator machine (Python 3.12, torch+CUDA, JAX, NumPyro, no Pyro): first, here, put
Pyro's wheels where the device tool carries them::

    mkdir -p .whl && cp ../shared/wheels/*.whl .whl/ && echo /.whl/ >> .git/info/exclude

then run with ``carry=[".whl"]``::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 \
      && python3 -m pytest -q -p no:cacheprovider tests/test_compiled_step.py \
           tests/test_graph_safe.py 2>&1 | tee $OUT/tests.log \
      && python3 -m benchmarks.gpu.run --device cuda --numpyro --out $OUT 2>&1 | tee $OUT/log
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

from benchmarks.plain_models import PlainM2, PlainPPCA, PlainVAE
from pyrovae.infer import make_objective, param_scope
from pyrovae.infer.compiled import CompiledStep, make_capturable_optimizer
from pyrovae.models import M2, PPCA, VAE
from pyrovae.runs.launch import add_device_options
from pyrovae.runs.provenance import provenance, write_json
from pyrovae.runs.script import start_device

logger = logging.getLogger(__name__)

VARIANTS = ("pyrovae_eager", "pyrovae_jit", "pyrovae_compiled", "plain_eager", "plain_graph")
MODELS = ("vae", "m2", "ppca")
MNIST_PIXEL_MEAN = 0.1307  # the mean grey level of MNIST's training images


@dataclass
class Workload:
    """A model, its plain twin, its data streams and how one step's loss is computed."""

    name: str
    make_module: Callable[[], torch.nn.Module]
    make_plain: Callable[[torch.nn.Module], torch.nn.Module]
    plain_loss: Callable[[torch.nn.Module, list, list], torch.Tensor]
    streams: list[tuple[torch.Tensor, ...]]
    batch_sizes: list[int]
    lr: float
    objective: str

    @property
    def num_examples(self) -> int:
        return max(s[0].shape[0] for s in self.streams)

    @property
    def steps(self) -> int:
        main = max(range(len(self.streams)), key=lambda i: self.streams[i][0].shape[0])
        return self.streams[main][0].shape[0] // self.batch_sizes[main]


def epoch_batches(work: Workload, device: torch.device, per_call: int = 1) -> list[list]:
    """One epoch's index batches from device permutations: ``steps / per_call`` calls, each a
    list (per stream) of [B] indices, or [per_call, B] for several steps per call."""
    steps = work.steps - work.steps % per_call
    views = []
    for stream, b in zip(work.streams, work.batch_sizes, strict=True):
        n = stream[0].shape[0]
        b = min(b, n)
        cycles = -(-steps * b // n)
        perm = torch.cat([torch.randperm(n, device=device) for _ in range(cycles)])[: steps * b]
        views.append(
            perm.view(steps // per_call, per_call, b) if per_call > 1 else perm.view(steps, b)
        )
    return [list(batch) for batch in zip(*views, strict=True)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_epochs(step, work: Workload, device, epochs: int, per_call: int = 1) -> dict:
    """Run 1 + ``epochs`` epochs of ``step(batches) -> loss``; time all but the first."""
    seconds, loss_sum = [], None
    for _ in range(epochs + 1):
        batches = epoch_batches(work, device, per_call)
        _sync(device)
        started = time.perf_counter()
        total = torch.zeros((), device=device)
        for b in batches:
            total += step(b).detach().sum()
        _sync(device)
        seconds.append(time.perf_counter() - started)
        loss_sum = total
    num_steps = len(batches) * per_call
    return {
        "seconds_per_epoch": statistics.median(seconds[1:]),
        "seconds": seconds[1:],
        "warmup_seconds": seconds[0],
        "steps_per_epoch": num_steps,
        "loss_per_example": float(loss_sum) / num_steps / work.num_examples,
    }


def _positional(fn):
    def call(*args):
        *tensors, idx = args
        return fn(*tensors, subsample=idx)

    return call


def pyrovae_step(work: Workload, module, variant: str, device, per_call: int):
    """``step(batches) -> loss`` for a pyrovae variant, as ``fit`` runs it."""
    params = list(module.parameters())
    streams = work.streams
    if variant == "pyrovae_compiled":
        objective = make_objective(work.objective, graph_safe=True)

        def loss_of(tensors, idx):
            return objective.differentiable_loss(
                module.model, module.guide, *tensors, subsample=idx
            )

        compiled = CompiledStep(loss_of, make_capturable_optimizer(params, work.lr))
        return lambda batches: compiled(streams, batches)
    if per_call != 1:
        raise ValueError("several steps per call need the compiled step")
    jit = variant == "pyrovae_jit"
    objective = make_objective(work.objective, jit=jit)
    model, guide = module.model, module.guide
    if jit:
        model, guide = _positional(model), _positional(guide)
    optim = torch.optim.Adam(params, lr=work.lr, fused=True)

    def step(batches):
        if jit:
            loss = sum(
                objective.differentiable_loss(model, guide, *t, idx)
                for t, idx in zip(streams, batches, strict=True)
            )
        else:
            loss = sum(
                objective.differentiable_loss(model, guide, *t, subsample=idx)
                for t, idx in zip(streams, batches, strict=True)
            )
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        return loss

    return step


def plain_step(work: Workload, plain, variant: str, device, per_call: int):
    streams = work.streams

    def loss_of(tensors, batches):
        return work.plain_loss(plain, tensors, batches)

    if variant == "plain_graph":
        optim = make_capturable_optimizer(list(plain.parameters()), work.lr)
        compiled = CompiledStep(loss_of, optim, per_stream=False)
        return lambda batches: compiled(streams, batches)
    if per_call != 1:
        raise ValueError("several steps per call need the compiled step")
    optim = torch.optim.Adam(plain.parameters(), lr=work.lr, fused=True)

    def step(batches):
        loss = loss_of(streams, batches)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        return loss

    return step


def run_variant(work: Workload, variant: str, device, epochs: int, per_call: int) -> dict:
    torch.manual_seed(0)
    module = work.make_module().to(device)
    row = {"model": work.name, "variant": variant, "batch_sizes": work.batch_sizes}
    calls = per_call if variant in ("pyrovae_compiled", "plain_graph") else 1
    row["steps_per_call"] = calls
    try:
        with param_scope(module):
            if variant.startswith("plain"):
                step = plain_step(work, work.make_plain(module).to(device), variant, device, calls)
            else:
                step = pyrovae_step(work, module, variant, device, calls)
            row.update(time_epochs(step, work, device, epochs, calls))
    except Exception as err:  # a variant that cannot run is recorded, the others still run
        logger.exception("%s %s failed", work.name, variant)
        row["error"] = f"{type(err).__name__}: {err}"[:800]
    return row


def _images(n: int, d: int, device, binary: bool, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    grey = torch.rand(n, d, generator=gen) * (2 * MNIST_PIXEL_MEAN)  # mean as MNIST's
    x = (torch.rand(n, d, generator=gen) < grey).float() if binary else grey
    return x.to(device)


def workloads(args, device) -> list[Workload]:
    n = 512 if args.quick else 60000
    n_u = 256 if args.quick else args.m2_unlabelled
    if args.data == "mnist":
        from pyrovae.data import binarize, labelled_split, load_dataset

        train = load_dataset("mnist", "train", root=args.data_root, device=device)
        grey, labels = train.x[:n], train.y[:n]
        x = binarize(grey, seed=0)
        split = labelled_split(labels, 100, min(n_u, n - 100), seed=0)
        xu, xl, yl = x[split.unlabelled[:n_u]], x[split.labelled], labels[split.labelled]
    else:
        grey, x = _images(n, 784, device, False, 0), _images(n, 784, device, True, 0)
        xu = _images(n_u, 784, device, True, 1)
        xl = _images(100, 784, device, True, 2)
        yl = (torch.arange(100) % 10).to(device)
    b_vae = 128
    b_u, b_l = (64, 100) if args.quick else (200, 100)
    b_ppca = 128 if args.quick else 1000

    def vae_loss(plain, streams, batches):
        [(x_all,)], [idx] = streams, batches
        return plain.loss(x_all.index_select(0, idx), x_all.shape[0] / idx.shape[0])

    def m2_loss(plain, streams, batches):
        (xu_all,), (xl_all, yl_all) = streams
        iu, il = batches
        return plain.loss(
            xu_all.index_select(0, iu), xu_all.shape[0] / iu.shape[0],
            xl_all.index_select(0, il), yl_all.index_select(0, il),
            xl_all.shape[0] / il.shape[0], xl_all.shape[0],
        )  # fmt: skip

    chosen = {
        "vae": Workload(
            "vae", lambda: VAE(784, 20, hidden_sizes=(400,)), PlainVAE, vae_loss,
            [(x,)], [b_vae], 1e-3, "elbo",
        ),
        "m2": Workload(
            "m2", lambda: M2(784, 10, 50, hidden_sizes=(500,), num_train=60000), PlainM2, m2_loss,
            [(xu,), (xl, yl)], [b_u, b_l], 3e-4, "enum",
        ),
        "ppca": Workload(
            "ppca", lambda: PPCA(784, 10), PlainPPCA, vae_loss, [(grey,)], [b_ppca], 1e-2, "elbo",
        ),
    }  # fmt: skip
    return [chosen[m] for m in args.models]


def numpyro_row(x: torch.Tensor, epochs: int) -> dict:
    row = {"model": "vae", "variant": "numpyro_jit_epoch", "batch_sizes": [128]}
    # JAX would otherwise take 75 % of the GPU's memory at import, beside torch's cache.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        from benchmarks.gpu.numpyro_vae import time_epochs as numpyro_epochs
    except ImportError as err:
        row["error"] = f"numpyro/jax not importable: {err}"
        return row
    try:
        result = numpyro_epochs(x.cpu().numpy(), batch_size=128, epochs=epochs)
    except Exception as err:  # recorded beside the torch results, which are kept
        logger.exception("the NumPyro VAE failed")
        row["error"] = f"{type(err).__name__}: {err}"[:800]
        return row
    row.update(result)
    row["seconds_per_epoch"] = statistics.median(result["seconds"])
    return row


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from pyrovae.runs.provenance import cpu_name

    return cpu_name()


def format_table(rows: list[dict]) -> str:
    lines = ["| model | variant | steps/call | s/epoch | loss/example |", "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | | failed: {r['error'][:90]} | |")
            continue
        loss = r.get("loss_per_example", math.nan)
        lines.append(
            f"| {r['model']} | {r['variant']} | {r.get('steps_per_call', 1)} | "
            f"{r['seconds_per_epoch']:.4f} | {loss:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_device_options(parser)
    parser.add_argument("--out", default="runs/benchmarks/gpu", help="folder for results.json")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after 1 warm-up)")
    parser.add_argument(
        "--steps-per-graph", type=int, default=1,
        help="optimiser steps per call of the compiled variants (default 1)",
    )  # fmt: skip
    parser.add_argument("--m2-unlabelled", type=int, default=10000)
    parser.add_argument("--data", choices=("synthetic", "mnist"), default="synthetic")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--quick", action="store_true", help="tiny data: a smoke run")
    parser.add_argument("--numpyro", action="store_true", help="also time the NumPyro VAE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.epochs < 1 or args.steps_per_graph < 1:
        parser.error("--epochs and --steps-per-graph must be >= 1")
    device = start_device(args)
    pyro.enable_validation(False)
    rows = []
    works = workloads(args, device)
    for work in works:
        for variant in args.variants:
            row = run_variant(work, variant, device, args.epochs, args.steps_per_graph)
            logger.info("%s", row)
            rows.append(row)
    if args.numpyro:
        vae = next((w for w in works if w.name == "vae"), None)
        if vae is None:
            parser.error("--numpyro times the VAE: include vae in --models")
        rows.append(numpyro_row(vae.streams[0][0], args.epochs))
    report = {
        "device": device_name(device),
        "torch_device": str(device),
        "settings": {k: v for k, v in vars(args).items()},
        "provenance": provenance(device),
        "pyro": pyro.__version__,
        "results": rows,
    }
    out = Path(args.out)
    write_json(out / "results.json", report)
    table = format_table(rows)
    (out / "table.md").write_text(f"Device: {report['device']}\n\n{table}\n")
    print(f"Device: {report['device']}\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
