"""Inpainting binarised MNIST with a trained VAE: three posterior samplers compared.

For test images with the top half, the bottom half, a random 50 % or a random 80 % of the pixels
missing, every method of :func:`pyrovae.infer.impute` (pseudo-Gibbs, Metropolis-within-Gibbs,
importance sampling) imputes the missing pixels; reported per pattern and method:

* ``missing_log_likelihood``: ``log p(x_mis | x_obs)`` of the true missing pixels under the
  method's predictive mixture (:func:`pyrovae.infer.imputation.missing_log_likelihood`), nats per
  image and per missing pixel (higher is better);
* ``class_error``: the error rate of a classifier trained on full images (multinomial logistic
  regression, sklearn, on one binarisation of the first ``--classifier-train-size`` training
  images) applied to the imputed images (the conditional means, observed pixels kept); beside it
  the error on the true images and on the images with the missing pixels set to 0;
* wall time, effective sample size (importance), acceptance rate (Metropolis).

The test images are one fixed stochastic binarisation (seed 1234) of the first
``--num-images`` MNIST test images; the random masks are seeded.

Example (smoke)::

    python -m experiments.uses.train_vae --train-size 300 --epochs 1 --out /tmp/uses_vae
    python -m experiments.uses.impute --checkpoint /tmp/uses_vae/vae.pt --num-images 20 \
        --num-sweeps 4 --num-samples 20 --classifier-train-size 500 --out /tmp/uses_impute

References:
    D. J. Rezende, S. Mohamed and D. Wierstra. ICML 2014. P.-A. Mattei and J. Frellsen.
    NeurIPS 2018; ICML 2019 (see :mod:`pyrovae.infer.imputation`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyro
import torch

from experiments.figures import save_image_grid
from pyrovae import load_checkpoint
from pyrovae.data import binarize, load_dataset
from pyrovae.infer.imputation import (
    METHODS,
    PATTERNS,
    impute,
    make_mask,
    missing_log_likelihood,
)
from pyrovae.runs.data import test_images
from pyrovae.runs.provenance import provenance, write_json
from pyrovae.runs.script import add_run_arguments, run_script, start_script


def train_classifier(x: np.ndarray, y: np.ndarray, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=200, C=0.05, random_state=seed).fit(x, y)


def save_grid(path: Path, columns: dict[str, torch.Tensor], observed: torch.Tensor,
              rows: int = 8, side: int = 28, title: str | None = None) -> None:
    """One row per image; columns: observed (missing pixels blue), each method, truth; black
    on white, upscaled and labelled by `save_image_grid`."""
    names = list(columns)
    missing = torch.tensor([0.35, 0.35, 0.8])
    tiles = []
    for r in range(rows):
        for name in names:
            ink = columns[name][r].detach().cpu().float()
            rgb = (1.0 - ink)[:, None].repeat(1, 3)  # [D, 3]
            if name == "observed":
                rgb[~observed[r]] = missing
            tiles.append(rgb.T.reshape(-1))  # channel-major, as save_image_grid takes colour
    save_image_grid(path, torch.stack(tiles), (3, side, side), nrow=len(names), title=title,
                    col_labels=[name.replace("_", " ") for name in names],
                    row_labels=[str(r + 1) for r in range(rows)])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a VAE saved by pyrovae (vae.pt)")
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--data-root", default=None, help="default: $PYROVAE_DATA")
    parser.add_argument("--num-images", type=int, default=1000, help="first N test images")
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=PATTERNS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--num-sweeps", type=int, default=100, help="chains: sweeps")
    parser.add_argument("--num-chains", type=int, default=1, help="chains per image")
    parser.add_argument("--num-samples", type=int, default=100, help="importance samples")
    parser.add_argument("--pseudo-gibbs-warmup", type=int, default=0,
                        help="metropolis_gibbs: first sweeps as pseudo-Gibbs (<= burn-in)")
    parser.add_argument("--num-fills", type=int, default=10, help="importance: R completions")
    parser.add_argument("--batch-size", type=int, default=250, help="images per call")
    parser.add_argument("--sample-chunk", type=int, default=50)
    parser.add_argument("--classifier-train-size", type=int, default=10000)
    parser.add_argument("--figure-rows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    add_run_arguments(parser, out="runs/uses/impute", threads=1)
    return parser.parse_args(argv)


def run_method(model, x, observed, method, args):
    """Impute in batches of images; returns (imputed [N, D], log-lik of missing [N], extras)."""
    means, log_liks, extras = [], [], {"ess": [], "acceptance": []}
    for start in range(0, x.shape[0], args.batch_size):
        xb, ob = x[start:start + args.batch_size], observed[start:start + args.batch_size]
        result = impute(model, xb, ob, method, num_samples=args.num_samples,
                        num_sweeps=args.num_sweeps, num_chains=args.num_chains,
                        sample_chunk=args.sample_chunk, num_fills=args.num_fills,
                        pseudo_gibbs_warmup=args.pseudo_gibbs_warmup)
        means.append(result.mean)
        log_liks.append(missing_log_likelihood(model, result, xb, sample_chunk=args.sample_chunk))
        if method == "importance":
            extras["ess"].append(result.effective_sample_size)
        if result.acceptance_rate is not None:
            extras["acceptance"].append(result.acceptance_rate)
    out = {}
    if extras["ess"]:
        out["median_effective_sample_size"] = float(torch.cat(extras["ess"]).median())
    if extras["acceptance"]:
        out["acceptance_rate"] = float(np.mean(extras["acceptance"]))
    return torch.cat(means), torch.cat(log_liks), out


def main(argv=None) -> int:
    args = parse_args(argv)
    device, out = start_script(args)
    model = load_checkpoint(args.checkpoint, map_location=device)

    test = load_dataset(args.dataset, "test", root=args.data_root)
    x = test_images(test.x[: args.num_images], "dynamic").to(device)
    labels = test.y[: args.num_images].numpy()
    train = load_dataset(args.dataset, "train", root=args.data_root)
    started = time.perf_counter()
    x_train = binarize(train.x[: args.classifier_train_size], args.seed).numpy()
    classifier = train_classifier(x_train, train.y[: args.classifier_train_size].numpy(),
                                  args.seed)
    classifier_seconds = time.perf_counter() - started

    def error(images: torch.Tensor) -> float:
        return float((classifier.predict(images.cpu().numpy()) != labels).mean())

    payload = {**provenance(device), "checkpoint": str(args.checkpoint),
               "num_images": int(x.shape[0]), "classifier": {
                   "kind": "sklearn LogisticRegression(C=0.05, max_iter=200)",
                   "train_size": args.classifier_train_size,
                   "seconds": classifier_seconds, "error_true_images": error(x)},
               "settings": {k: getattr(args, k) for k in (
                   "num_sweeps", "num_chains", "num_samples", "num_fills", "batch_size",
                   "sample_chunk", "seed", "pseudo_gibbs_warmup")},
               "patterns": {}}
    for p_index, pattern in enumerate(args.patterns):
        observed = make_mask(pattern, x.shape[0], seed=args.seed + p_index).to(device)
        n_missing = (~observed).sum(1).double()
        zero_filled = torch.where(observed, x, torch.zeros_like(x))
        row = {"missing_fraction": float((~observed).double().mean()),
               "class_error_zero_filled": error(zero_filled), "methods": {}}
        columns = {"observed": zero_filled}
        for method in args.methods:
            pyro.set_rng_seed(args.seed)
            t0 = time.perf_counter()
            imputed, log_lik, extra = run_method(model, x, observed, method, args)
            seconds = time.perf_counter() - t0
            row["methods"][method] = {
                "missing_log_likelihood": float(log_lik.mean()),
                "missing_log_likelihood_stderr": float(log_lik.std() / len(log_lik) ** 0.5),
                "missing_log_likelihood_per_pixel": float((log_lik / n_missing).mean()),
                "class_error": error(imputed),
                "seconds": seconds,
                **extra,
            }
            columns[method] = imputed
            print(f"{pattern:9s} {method:17s} loglik {float(log_lik.mean()):8.2f} "
                  f"error {row['methods'][method]['class_error']:.3f}  {seconds:.1f} s")
        columns["truth"] = x
        rows = min(args.figure_rows, x.shape[0])
        save_grid(out / f"inpainting_{pattern}.png", columns, observed.cpu(), rows=rows,
                  title=f"inpainting ({pattern}) the first {rows} test images; blue: missing")
        payload["patterns"][pattern] = row
        write_json(out / "impute.json", payload)
    print(f"wrote {out / 'impute.json'}")
    return 0


if __name__ == "__main__":
    run_script(main)
