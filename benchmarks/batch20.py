"""Time per training step at batch 20: ``pyrovae.fit`` against the same step in plain PyTorch.

Burda et al.'s VAE (784-200-200-50 tanh encoder and mirrored decoder, Bernoulli likelihood) on
the first ``--rows`` MNIST training images, binarised once, one torch thread. For each objective
(the ELBO with one sample, IWAE with K = 5, and IWAE with DReG; each eager and JIT-compiled;
DReG also eager under bfloat16 autocast, ``fit(precision="bf16")``, against the plain float32
step) both runs start from the same weights and use fused Adam (the plain step is IWAE's for
DReG); they are interleaved epoch by epoch (a ``fit`` callback runs one plain
epoch), and each time is the median (and the minimum) over the epochs after the first, divided
by the steps. Whether a setting keeps the bound: after every epoch the K = 50 importance-weighted
bound of ``fit``'s model, in float32, on ``--held-out`` further training images (binarised once),
so that settings trained from the same weights can be compared at their last epoch.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/batch20.py --epochs 6 --out /tmp/batch20.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the repository root

from plain_models import PlainVAE  # noqa: E402
from run_benchmarks import plain_epoch  # noqa: E402

from pyrovae import fit  # noqa: E402
from pyrovae.data import binarize, load_dataset  # noqa: E402
from pyrovae.infer import held_out_bound_callback  # noqa: E402
from pyrovae.models.vae import VAE  # noqa: E402
from pyrovae.runs.provenance import command_line, machine  # noqa: E402

SETTINGS = {  # name -> (fit's objective options, plain loss's particles)
    "elbo_k1": (dict(objective="elbo"), 1),
    "elbo_k1_jit": (dict(objective="elbo", jit=True), 1),
    "iwae_k5": (dict(objective="iwae", num_particles=5), 5),
    "iwae_k5_jit": (dict(objective="iwae", num_particles=5, jit=True), 5),
    "iwae_k5_dreg": (dict(objective="iwae", num_particles=5, dreg=True), 5),
    "iwae_k5_dreg_jit": (dict(objective="iwae", num_particles=5, dreg=True, jit=True), 5),
    "iwae_k5_dreg_bf16": (dict(objective="iwae", num_particles=5, dreg=True, precision="bf16"), 5),
}


def compare(name: str, x: torch.Tensor, epochs: int, batch_size: int,
            held_out: torch.Tensor) -> dict:
    options, k = SETTINGS[name]
    torch.manual_seed(0)
    vae = VAE(784, 50, hidden_sizes=(200, 200), activation="tanh")
    plain = PlainVAE(vae)
    n = x.shape[0]

    def plain_loss(batches):
        (idx, scale), = batches
        xb = x.index_select(0, idx)
        return plain.loss(xb, scale) if k == 1 else plain.iwae_loss(xb, scale, k)

    state: dict = {}
    plain_times: list[float] = []

    def run_plain(_end) -> dict:
        seconds = plain_epoch(plain_loss, plain.parameters(), [(x,)], [batch_size], 1e-3, state,
                              x.device)
        plain_times.append(seconds)
        return {"plain_seconds": seconds}

    bound = held_out_bound_callback(held_out, num_samples=50)  # float32: outside the steps
    history = fit(vae, x, lr=1e-3, epochs=epochs, batch_size=batch_size,
                  callbacks=[run_plain, bound], progress=False, **options)
    steps = -(-n // batch_size)
    ours = statistics.median(history.column("seconds")[1:]) / steps
    theirs = statistics.median(plain_times[1:]) / steps
    ratio_of_minima = min(history.column("seconds")[1:]) / min(plain_times[1:])
    held_out_bounds = history.column("val_bound_k50")
    logging.info("%s: pyrovae %.3f ms/step, plain %.3f ms/step, ratio %.3f (of minima %.3f); "
                 "held-out K=50 bound %.2f", name, 1e3 * ours, 1e3 * theirs, ours / theirs,
                 ratio_of_minima, held_out_bounds[-1])
    return dict(setting=name, steps_per_epoch=steps, pyrovae_ms_per_step=1e3 * ours,
                plain_ms_per_step=1e3 * theirs, ratio=ours / theirs,
                ratio_of_minima=ratio_of_minima, held_out_bound_k50=held_out_bounds,
                pyrovae_epoch_seconds=history.column("seconds"), plain_epoch_seconds=plain_times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="first N training images")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--held-out", type=int, default=1000,
                        help="training images after the first --rows, for the held-out bound")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", default=None, help="a JSON file for the results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    torch.set_num_threads(1)
    pyro.enable_validation(False)
    images = load_dataset("mnist", "train", root=args.data_root,
                          limit=args.rows + args.held_out).x
    x = binarize(images[: args.rows], 0)
    held_out = binarize(images[args.rows:], 1)
    results = [compare(name, x, args.epochs, args.batch_size, held_out)
               for name in args.settings]
    if args.out:
        Path(args.out).write_text(json.dumps(
            dict(command=command_line(), machine=machine(), rows=args.rows, held_out=args.held_out,
                 batch_size=args.batch_size, results=results), indent=1))


if __name__ == "__main__":
    main()
