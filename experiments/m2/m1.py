"""M1 of Kingma et al. (2014): an unsupervised VAE whose posterior q(z1|x) feeds M2 (M1+M2).

Trains ``VAE(784 -> hidden -> latent)`` (Bernoulli likelihood, softplus, dynamically binarised
images) on all training images *without their labels*, for a number of epochs or a wall-time
budget (``--max-minutes``; a later invocation with the same ``--out`` resumes ``last.pt``),
and saves ``OUT/m1.pt`` (``pyrovae.load_checkpoint``) and ``OUT/metrics.json`` (test ELBO per
example after every epoch, seconds per epoch). ``python -m experiments.m2.mnist --m1
OUT/m1.pt`` then trains M2 on samples of q(z1 | x) instead of pixels.

The test images are never used for training; the validation images of the M2 runs are among
the training images here, but only as unlabelled images, as they are in M2 itself.

At the end it reports M1's active latent dimensions (``pyrovae.data.streams.active_dimensions``:
the standard deviation over the training images of the posterior mean above ``--min-std``,
Kingma et al.'s 0.1; M2 keeps only these when it reads the codes, ``experiments.m2.mnist
--m1-min-std``) and, once the run has trained all its ``--epochs`` (unless
``--nll-samples 0``), the test NLL: the importance-sampled ``-log p(x)``
(``pyrovae.infer.evaluation.importance_nll``, K = ``--nll-samples`` draws, an upper bound in
expectation that tightens as K grows) averaged over ``--nll-images`` binarised test images.

The test ELBO and NLL are always those of statically binarised test images (a Bernoulli model
of binary data, comparable across runs), also for an M1 trained on grey levels.

``--preset kingma2014``: Kingma et al.'s M1 (their released code's
``models/mnist_z_x_50-500-500_longrun``: 784-500-500-50, softplus, Bernoulli likelihood of
grey levels) trained with Adam lr 3e-4 in batches of 1000, for up to 3000 epochs (a GPU job:
resume in ``--max-minutes`` pieces with the same ``--out``). Options given explicitly override it.

Example (smoke)::

    python -m experiments.m2.m1 --limit 500 --epochs 1 --out /tmp/m1
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from pyrovae.data import binarize
from pyrovae.data.streams import active_dimensions
from pyrovae.infer.evaluation import elbo_terms, importance_nll
from pyrovae.runs import vae as vae_family
from pyrovae.runs.data import SEEDS, image_set
from pyrovae.runs.provenance import evaluates, provenance, save_checkpoint, write_json
from pyrovae.runs.script import add_run_arguments, run_script, start_run

logger = logging.getLogger("m1")


PRESETS = {
    "kingma2014": dict(hidden=[500, 500], latent_dim=50, activation="softplus", lr=3e-4,
                       batch_size=1000, epochs=3000, binarization="grey"),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="Kingma et al.'s M1 recipe (explicit options override it)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--limit", type=int, default=None, help="first N images only (smoke)")
    p.add_argument("--binarization", choices=["dynamic", "grey"], default="dynamic",
                   help="train on images binarised afresh every epoch, or on grey levels in "
                   "[0, 1] with the Bernoulli likelihood (allow_continuous; Kingma's input)")
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--hidden-sizes", type=int, nargs="+", default=[600, 600])
    p.add_argument("--activation", default="softplus")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--max-minutes", type=float, default=None, help="training budget (none)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-std", type=float, default=0.1,
                   help="active-dimension threshold on the posterior mean's std (report only)")
    p.add_argument("--nll-samples", type=int, default=5000,
                   help="importance samples per test image for the test NLL (0: skip it)")
    p.add_argument("--nll-images", type=int, default=10000, help="test images for the NLL")
    add_run_arguments(p, out="runs/m1_mnist")
    known, _ = p.parse_known_args(argv)
    if known.preset is not None:
        p.set_defaults(**PRESETS[known.preset])
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    device = start_run(args)
    data = image_set(args.dataset, binarization=args.binarization, seed=args.seed,
                     train_size=args.limit, test_size=args.limit, device=device)
    x, x_test = data.train_x, data.test_x
    torch.manual_seed(args.seed)
    grey = args.binarization == "grey"
    vae = vae_family.build(vars(args), data)
    started = time.perf_counter()

    def monitor(state):
        test_elbo = float(elbo_terms(state.module, x_test[:2000]).elbo.mean())
        minutes = (time.perf_counter() - started) / 60
        logger.info("epoch %d: test ELBO %.2f nats/example, %.1f min", state.epoch,
                    test_elbo, minutes)
        return {"test_elbo": test_elbo}

    history, _ = vae_family.train(vae, data.train, vars(args), device=device, out=args.out,
                                  resume=True, minutes=args.max_minutes, callbacks=[monitor])
    if not evaluates():
        return {}
    save_checkpoint(args.out / "m1.pt", vae)
    vae.eval()
    keep, std = active_dimensions(vae, x if grey else binarize(x, SEEDS["m1_activity"] + args.seed),
                                  args.min_std)
    metrics = dict(**provenance(device), preset=args.preset,
                   model_config=vae.config, epochs_done=len(history.epochs),
                   lr=args.lr, batch_size=args.batch_size,
                   wall_seconds=time.perf_counter() - started, curve=history.epochs,
                   final_test_elbo=history.epochs[-1]["test_elbo"],
                   active_dims_rule=f"std over the training images of E_q[z_k|x] > {args.min_std}",
                   active_dims=keep.tolist(), num_active_dims=len(keep),
                   posterior_mean_std=std.tolist())
    # Once, when the run has all its epochs (not in every budgeted invocation).
    if args.nll_samples > 0 and len(history.epochs) >= args.epochs:
        x_nll = x_test[: args.nll_images]
        nll = -importance_nll(vae, x_nll, num_samples=args.nll_samples)
        metrics.update(test_nll=float(nll.mean()), test_nll_images=len(x_nll),
                       test_nll_samples=args.nll_samples)
        logger.info("test NLL %.2f nats (%d images, K = %d)", metrics["test_nll"], len(x_nll),
                    args.nll_samples)
    logger.info("%d of %d latent dimensions active", len(keep), vae.latent_dim)
    write_json(args.out / "metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_flush_denormal(True)
    run_script(lambda: run(parse_args()))
