"""Seconds per M2 unlabelled step (loss and backward, 200 images, 784-500-50): fp32 or bf16,
exact enumeration or sum-and-sample, interleaved so that each sees the same machine state.

Usage::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/m2_step_timing.py --rounds 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from pyrovae.infer import SumAndSampleELBO, make_objective  # noqa: E402
from pyrovae.infer.precision import autocast_networks  # noqa: E402
from pyrovae.runs.m2_presets import m2_preset  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds (median reported)")
    p.add_argument("--steps", type=int, default=3, help="steps per estimator per round")
    p.add_argument("--batch", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(1)
    pyro.enable_validation(False)
    x = torch.rand(args.batch, 784, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = m2_preset("cpu_fast").build(num_train=50000, num_labelled=3000)
    objectives = {"enum": make_objective("enum"), "sum_and_sample k=3": SumAndSampleELBO(3)}
    times = {(name, precision): [] for name in objectives for precision in ("fp32", "bf16")}
    cpu = torch.device("cpu")
    for _ in range(args.rounds):
        for (name, precision), seconds in times.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                with autocast_networks(model, cpu, precision):
                    loss = objectives[name].differentiable_loss(model.model, model.guide, x)
                loss.backward()
            seconds.append((time.perf_counter() - started) / args.steps)
    base = statistics.median(times[("enum", "fp32")])
    for (name, precision), seconds in times.items():
        median = statistics.median(seconds)
        print(json.dumps(dict(objective=name, precision=precision, seconds_per_step=median,
                              speedup_vs_enum_fp32=base / median, rounds=args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
