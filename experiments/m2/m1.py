"""M1 of Kingma et al. (2014): an unsupervised VAE whose posterior q(z1|x) feeds M2 (M1+M2).

Trains ``VAE(784 -> hidden -> latent)`` (Bernoulli likelihood, softplus, dynamically binarised
images) on all training images *without their labels*, for a number of epochs or a wall-time
budget (``--max-minutes``; a later invocation with the same ``--out`` resumes ``last.pt``),
and saves ``OUT/m1.pt`` (``pyrovae.load_checkpoint``) and ``OUT/metrics.json`` (test ELBO per
example after every epoch, seconds per epoch). ``python -m experiments.m2.mnist --m1
OUT/m1.pt`` then trains M2 on samples of q(z1 | x) instead of pixels.

The test images are never used for training; the validation images of the M2 runs are among
the training images here, but only as unlabelled images, as they are in M2 itself.

Example (smoke)::

    python -m experiments.m2.m1 --limit 500 --epochs 1 --out /tmp/m1
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

import pyrovae
from experiments.common import add_run_arguments, provenance, start_run, write_json
from pyrovae.data import DynamicBinarized, binarize, load_dataset
from pyrovae.infer import TimeBudget
from pyrovae.infer.evaluation import elbo_terms
from pyrovae.models import VAE

logger = logging.getLogger("m1")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--limit", type=int, default=None, help="first N images only (smoke)")
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, nargs="+", default=[600, 600])
    p.add_argument("--activation", default="softplus")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--max-minutes", type=float, default=None, help="training budget (none)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    add_run_arguments(p, out="runs/m1_mnist")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    device = start_run(args)
    train = load_dataset(args.dataset, "train", device=device)
    test = load_dataset(args.dataset, "test", device=device)
    x, x_test = train.x[: args.limit], binarize(test.x[: args.limit], 20_000)
    torch.manual_seed(args.seed)
    vae = VAE(data_dim=x.shape[1], latent_dim=args.latent_dim, hidden_sizes=args.hidden,
              activation=args.activation)
    started = time.perf_counter()

    def monitor(state):
        test_elbo = float(elbo_terms(state.module, x_test[:2000]).elbo.mean())
        minutes = (time.perf_counter() - started) / 60
        logger.info("epoch %d: test ELBO %.2f nats/example, %.1f min", state.epoch,
                    test_elbo, minutes)
        return {"test_elbo": test_elbo}

    history = pyrovae.fit(vae, DynamicBinarized(x, args.seed), lr=args.lr, epochs=args.epochs,
                          batch_size=args.batch_size, seed=args.seed, device=device,
                          callbacks=[monitor, TimeBudget(args.max_minutes)],
                          checkpoint_dir=args.out, resume=True)
    pyrovae.save_checkpoint(args.out / "m1.pt", vae)
    metrics = dict(**provenance(device),
                   model_config=vae.config, epochs_done=len(history.epochs),
                   wall_seconds=time.perf_counter() - started, curve=history.epochs,
                   final_test_elbo=history.epochs[-1]["test_elbo"])
    write_json(args.out / "metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_flush_denormal(True)
    run(parse_args())
