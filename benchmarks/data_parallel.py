"""Data-parallel ``fit``: throughput per process, and the all-reduce's share of a step.

Trains a VAE 784-400-20 (Bernoulli, Adam) on random binary images for a few epochs with
``devices`` processes (CPU: gloo; ``--device cuda``: one GPU each, NCCL), each with a batch of
``--batch-size`` rows, and reports the median time of a step over the epochs after the first
and the examples per second per process and in all. Then, in the same process group, it times
the all-reduce alone: ``dist.all_reduce`` of one flat buffer of the model's size (what
:class:`pyrovae.infer.distributed.GradientAverage` sends every step), median of ``--repeats``.
It also prints the size of that buffer for the models of docs/scaling.md.

Usage (the script starts its other processes itself, through Lightning Fabric)::

    python benchmarks/data_parallel.py --devices 1 --out runs/dp1.json
    python benchmarks/data_parallel.py --devices 2 --out runs/dp2.json
    python benchmarks/data_parallel.py --sizes          # parameter counts only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from pyrovae import fit
from pyrovae.infer.distributed import global_rank
from pyrovae.models import M2, PPCA
from pyrovae.models.vae import VAE


def model_sizes() -> dict[str, int]:
    """Parameters (floats all-reduced per step, before the per-tensor flags) of each model."""
    models = {
        "VAE 784-400-20": VAE(784, 20, hidden_sizes=(400,)),
        "Burda VAE 784-200-200-50": VAE(784, 50, hidden_sizes=(200, 200)),
        "M2 (experiments/m2_mnist.py defaults: conv classifier, 500 hidden, z 50)": M2(
            784, 10, 50, hidden_sizes=[500], classifier_arch="conv", activation="relu",
            alpha=5000.0,
        ),
        "PPCA K=10 on MNIST": PPCA(784, 10),
    }
    return {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128, help="rows per process per step")
    p.add_argument("--steps", type=int, default=40, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=200, help="timed all-reduces")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--sizes", action="store_true", help="print parameter counts and stop")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.sizes:
        print(json.dumps(model_sizes(), indent=2))
        return
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    n = args.devices * args.batch_size * args.steps
    x = (torch.rand(n, 784, generator=gen) < 0.13).float()
    torch.manual_seed(0)
    vae = VAE(784, 20, hidden_sizes=(400,))
    history = fit(vae, x, devices=args.devices, device=args.device, batch_size=args.batch_size,
                  epochs=args.epochs, progress=False, validate=False)
    step_s = statistics.median(r["seconds"] / r["steps"] for r in history.epochs[1:])
    numel = sum(p.numel() for p in vae.parameters())  # after the first step: no flags
    reduce_s = None
    if dist.is_initialized():
        device = next(vae.parameters()).device
        flat = torch.ones(numel, device=device)
        times = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            dist.all_reduce(flat)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - started)
        reduce_s = statistics.median(times)
    if global_rank() != 0:
        return
    result = dict(
        devices=args.devices, device=args.device, batch_per_process=args.batch_size,
        threads_per_process=args.threads, step_seconds=step_s,
        examples_per_second_per_process=args.batch_size / step_s,
        examples_per_second=args.devices * args.batch_size / step_s,
        allreduce_floats=numel, allreduce_seconds=reduce_s,
        allreduce_share_of_step=None if reduce_s is None else reduce_s / step_s,
        command=" ".join([sys.executable, *sys.argv]),
    )
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
