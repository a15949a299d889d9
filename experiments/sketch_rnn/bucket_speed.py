"""Cost of a SketchRNN training step with random against length-bucketed batches.

Times ``--steps`` training steps (Trace_ELBO loss, backward, Adam) of the paper-sized model on
the first batches of epoch 0 of each plan: random batches (as ``pyrovae.fit`` draws them) and
[`pyrovae.data.buckets.LengthBuckets`][]'s, both cut to their longest sketch by the model (a
random batch of 100 sheep nearly always holds one of about 250 points). Reports CPU-seconds
(``time.process_time``, this process) and wall seconds per step, and the rows per batch.

    OMP_NUM_THREADS=1 python -m experiments.sketch_rnn.bucket_speed --steps 6
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro
import torch

from pyrovae.data.buckets import bucketed_batches
from pyrovae.data.sketches import load_sketches
from pyrovae.models import SketchRNN
from pyrovae.runs.provenance import provenance, write_json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="aaron_sheep")
    p.add_argument("--steps", type=int, default=6, help="timed steps per plan (default 6)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--pool", type=int, default=50, help="batches per sorted pool")
    p.add_argument("--latent-dim", type=int, default=128)
    p.add_argument("--encoder-size", type=int, default=256)
    p.add_argument("--decoder-size", type=int, default=512)
    p.add_argument("--num-mixtures", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("runs/sketch_rnn/bucket_speed.json"))
    return p.parse_args(argv)


def time_steps(model, tensors, batches) -> dict[str, float]:
    """Mean CPU and wall seconds of one optimiser step over ``batches`` (after one warm-up)."""
    elbo = pyro.infer.Trace_ELBO(max_plate_nesting=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    cpu = wall = 0.0
    for k, idx in enumerate(batches):
        c0, w0 = time.process_time(), time.perf_counter()
        loss = elbo.differentiable_loss(model.model, model.guide, *tensors, subsample=idx)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if k > 0:  # the first step pays for allocations
            cpu += time.process_time() - c0
            wall += time.perf_counter() - w0
    steps = len(batches) - 1
    return {"cpu_seconds_per_step": cpu / steps, "wall_seconds_per_step": wall / steps}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    data = load_sketches(args.dataset, "train", max_length=250, num_steps=251)
    tensors = (data.x, data.lengths)
    n = len(data)
    random = list(torch.randperm(n, generator=torch.Generator().manual_seed(0)).split(
        args.batch_size))[: args.steps + 1]
    bucketed = bucketed_batches(data.lengths, args.batch_size, 0, 0, args.pool)[: args.steps + 1]
    model = SketchRNN(latent_dim=args.latent_dim, encoder_size=args.encoder_size,
                      decoder_size=args.decoder_size, num_mixtures=args.num_mixtures)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results = {}
    for name, batches in [("random", random), ("bucketed", bucketed)]:
        model.load_state_dict(state)
        rows = [int(data.lengths[b].max()) + 1 for b in batches[1:]]
        results[name] = {**time_steps(model, tensors, batches),
                         "mean_rows_per_batch": sum(rows) / len(rows)}
        print(name, results[name], flush=True)
    speedup = (results["random"]["cpu_seconds_per_step"]
               / results["bucketed"]["cpu_seconds_per_step"])
    write_json(args.out, {"provenance": provenance("cpu"), "args": vars(args),
                          "mean_length": float(data.lengths.float().mean()),
                          "results": results, "cpu_speedup_bucketed_vs_random": speedup})
    print(f"CPU speed-up of bucketed over random batches: {speedup:.2f}x")


if __name__ == "__main__":
    main()
