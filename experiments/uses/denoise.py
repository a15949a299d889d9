"""Denoising binarised MNIST with a trained VAE: salt-and-pepper noise at several flip rates.

Each pixel of a binarised test image is flipped independently with probability e (one uniform
draw per pixel, seeded, shared by every e, so the flips at a smaller e are a subset of those at
a larger one). Three reconstructions of the clean image are compared, per e:

* the noisy image itself (its pixel error rate is about e);
* a 3x3 median filter of the noisy binary image (a non-model baseline; zero padding, i.e. the
  border is taken as background);
* the VAE's posterior mean ``E[x | y]`` (:func:`pyrovae.infer.denoising.denoise` with
  ``flip_prob=e``, importance sampling from the guide at the noisy image), thresholded at 0.5.

Reported per e: the pixel error rates of the three (± standard error over images), the posterior
mean's Brier score (mean squared error against the clean binary image, per pixel), the mean
importance-sampled ``log p(y)`` of the noisy images (nats per image) and the median effective
sample size. Writes ``denoise.json`` and ``denoising.png`` (for a few images: clean, then per e
the noisy image, the median filter and the posterior mean).

The test images are one fixed stochastic binarisation (seed 1234, as in
``experiments.uses.impute``) of the first ``--num-images`` test images.

Example (smoke)::

    python -m experiments.uses.train_vae --train-size 300 --epochs 1 --out /tmp/uses_vae
    python -m experiments.uses.denoise --checkpoint /tmp/uses_vae/vae.pt --num-images 20 \
        --num-samples 20 --out /tmp/uses_denoise
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

from experiments.figures import save_image_rows
from pyrovae import load_checkpoint
from pyrovae.data import load_dataset
from pyrovae.infer.denoising import denoise
from pyrovae.runs.data import SEEDS, test_images
from pyrovae.runs.provenance import evaluates, provenance, write_json
from pyrovae.runs.script import add_run_arguments, run_script, start_script


def median_filter(x: torch.Tensor, image_shape: tuple[int, int]) -> torch.Tensor:
    """3x3 median of each pixel's neighbourhood, zero padding; ``x`` [N, D] -> [N, D]."""
    images = x.view(x.shape[0], 1, *image_shape)
    patches = F.unfold(images, kernel_size=3, padding=1)  # [N, 9, D]
    return patches.median(dim=1).values


def error_rates(estimate: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """The pixel error rate of a binary ``estimate`` and its standard error over images."""
    per_image = (estimate != clean).double().mean(1)
    return {"error": float(per_image.mean()),
            "error_stderr": float(per_image.std() / per_image.numel() ** 0.5)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a VAE saved by pyrovae (vae.pt)")
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--data-root", default=None, help="default: $PYROVAE_DATA")
    parser.add_argument("--num-images", type=int, default=1000, help="first N test images")
    parser.add_argument("--flip-probs", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    parser.add_argument("--num-samples", type=int, default=1000, help="importance samples")
    parser.add_argument("--sample-chunk", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=250, help="images per call")
    parser.add_argument("--figure-images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="noise and importance sampling")
    add_run_arguments(parser, out="runs/uses/denoise", threads=1)
    return parser.parse_args(argv)


def run_denoise(model, noisy: torch.Tensor, flip_prob: float, args) -> tuple:
    """``denoise`` in batches of images; returns (mean [N, D], log p(y) [N], ESS [N])."""
    parts = [denoise(model, noisy[start:start + args.batch_size], flip_prob=flip_prob,
                     num_samples=args.num_samples, sample_chunk=args.sample_chunk)
             for start in range(0, noisy.shape[0], args.batch_size)]
    return (torch.cat([p.mean for p in parts]), torch.cat([p.log_evidence for p in parts]),
            torch.cat([p.effective_sample_size for p in parts]))


def figure_rows(clean: torch.Tensor, rows: dict[float, dict[str, torch.Tensor]]):
    """The labels and image strips of the figure: the clean images, then per e and kind."""
    labels, strips = ["clean"], [clean]
    for e, by_kind in rows.items():
        for kind, images in by_kind.items():
            labels.append(f"e={e:g} {kind}")
            strips.append(images)
    return labels, strips


def save_figure(path: Path, clean: torch.Tensor, rows: dict[float, dict[str, torch.Tensor]],
                image_shape: tuple[int, int]) -> None:
    """One row of images per (e, reconstruction), the clean images on top; grey = probability;
    upscaled and labelled by `save_image_rows`."""
    labels, strips = figure_rows(clean, rows)
    save_image_rows(path, strips, labels, image_shape,
                    title=f"denoising the first {clean.shape[0]} test images, flip rate e",
                    col_labels=[str(i + 1) for i in range(clean.shape[0])])


def main(argv=None) -> int:
    args = parse_args(argv)
    device, out = start_script(args)
    if not evaluates():  # the other ranks of a --devices run have no training to help with
        return 0
    model = load_checkpoint(args.checkpoint, map_location=device)
    test = load_dataset(args.dataset, "test", root=args.data_root)
    clean = test_images(test.x[: args.num_images], "dynamic").to(device)
    uniform = torch.rand(clean.shape, generator=torch.Generator().manual_seed(args.seed))
    uniform = uniform.to(device)

    payload = {**provenance(device), "checkpoint": str(args.checkpoint),
               "dataset": args.dataset, "num_images": int(clean.shape[0]),
               "settings": {"num_samples": args.num_samples, "sample_chunk": args.sample_chunk,
                            "batch_size": args.batch_size, "seed": args.seed,
                            "binarization_seed": SEEDS["test"]},
               "flip_probs": {}}
    shown = min(args.figure_images, clean.shape[0])
    figure_rows = {}
    for e in args.flip_probs:
        noisy = torch.where(uniform < e, 1.0 - clean, clean)
        median = median_filter(noisy, test.image_shape)
        pyro.set_rng_seed(args.seed)
        started = time.perf_counter()
        mean, log_evidence, ess = run_denoise(model, noisy, e, args)
        seconds = time.perf_counter() - started
        row = {"noisy": error_rates(noisy, clean), "median_filter": error_rates(median, clean),
               "posterior_mean": {**error_rates((mean > 0.5).to(clean.dtype), clean),
                                  "brier": float(((mean - clean) ** 2).mean())},
               "mean_log_evidence": float(log_evidence.mean()),
               "log_evidence_stderr": float(log_evidence.std() / len(log_evidence) ** 0.5),
               "median_effective_sample_size": float(ess.median()),
               "seconds": seconds}
        payload["flip_probs"][f"{e:g}"] = row
        figure_rows[e] = {"noisy": noisy[:shown], "median": median[:shown],
                          "posterior mean": mean[:shown]}
        post = row["posterior_mean"]
        print(f"e={e:g}: error noisy {row['noisy']['error']:.4f}, median "
              f"{row['median_filter']['error']:.4f}, posterior mean {post['error']:.4f} "
              f"(Brier {post['brier']:.4f}); log p(y) {row['mean_log_evidence']:.1f}, "
              f"ESS {row['median_effective_sample_size']:.1f}; {seconds:.0f} s")
        write_json(out / "denoise.json", payload)
    save_figure(out / "denoising.png", clean[:shown], figure_rows, test.image_shape)
    print(f"wrote {out / 'denoise.json'}")
    return 0


if __name__ == "__main__":
    run_script(main)
