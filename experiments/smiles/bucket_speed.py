"""Cost of a SMILES VAE training step with random against length-bucketed batches.

Times ``--steps`` training steps (Trace_ELBO loss, backward, Adam) of the default-sized model
(``experiments.smiles.train``'s defaults) on the first batches of epoch 0 of each plan: random
batches (as ``pyrovae.fit`` draws them) and [`pyrovae.data.buckets.LengthBuckets`][]'s, both
cut by the model to their longest molecule. Reports CPU-seconds (``time.process_time``, this
process) and wall seconds per step, and the token columns per batch.

    OMP_NUM_THREADS=1 python -m experiments.smiles.bucket_speed --steps 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from experiments.sketch_rnn.bucket_speed import time_steps
from pyrovae.data.buckets import bucketed_batches
from pyrovae.data.smiles import SmilesVocabulary, load_smiles
from pyrovae.models.smiles_vae import SMILESVAE
from pyrovae.runs.provenance import provenance, write_json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-limit", type=int, default=100_000,
                   help="molecules drawn from the MOSES train split (default 100000)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per plan (default 20)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--pool", type=int, default=50, help="batches per sorted pool")
    p.add_argument("--out", type=Path, default=Path("runs/smiles/bucket_speed.json"))
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    smiles = load_smiles("train", size=args.train_limit, seed=0)
    vocab = SmilesVocabulary.build(smiles)
    tokens, lengths = vocab.encode(smiles)
    n = len(smiles)
    random = list(torch.randperm(n, generator=torch.Generator().manual_seed(0)).split(
        args.batch_size))[: args.steps + 1]
    bucketed = bucketed_batches(lengths, args.batch_size, 0, 0, args.pool)[: args.steps + 1]
    model = SMILESVAE(vocab.tokens)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results = {}
    for name, batches in [("random", random), ("bucketed", bucketed)]:
        model.load_state_dict(state)
        columns = [int(lengths[b].max()) + 1 for b in batches[1:]]
        results[name] = {**time_steps(model, (tokens, lengths), batches),
                         "mean_columns_per_batch": sum(columns) / len(columns)}
        print(name, results[name], flush=True)
    speedup = (results["random"]["cpu_seconds_per_step"]
               / results["bucketed"]["cpu_seconds_per_step"])
    write_json(args.out, {"provenance": provenance("cpu"), "args": vars(args),
                          "mean_tokens": float(lengths.float().mean()),
                          "padded_columns": tokens.shape[1],
                          "results": results, "cpu_speedup_bucketed_vs_random": speedup})
    print(f"CPU speed-up of bucketed over random batches: {speedup:.2f}x")


if __name__ == "__main__":
    main()
