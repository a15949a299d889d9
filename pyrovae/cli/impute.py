"""``pyrovae impute``: fill in the missing pixels of test images with a trained VAE.

The first ``--num-images`` test images (binarised once with the test seed, as ``vae evaluate``
scores them, for a Bernoulli VAE; grey levels otherwise) lose the pixels of ``--mask``
([`pyrovae.infer.make_mask`][]); [`pyrovae.infer.impute`][] fills them in by ``--method``
and [`pyrovae.infer.missing_log_likelihood`][] scores the true missing pixels under the
method's predictive mixture (nats per image, higher is better). ``--out`` gets ``report.json``
and ``imputation.png`` (one row per image: observed with the missing pixels grey, imputed,
truth).
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch

from pyrovae.cli import _common as common
from pyrovae.data.mnist import canonical_name
from pyrovae.infer import impute, load_checkpoint, make_mask, missing_log_likelihood
from pyrovae.infer.checkpoint import read_checkpoint
from pyrovae.infer.imputation import METHODS, PATTERNS
from pyrovae.runs.data import image_set
from pyrovae.runs.folder import check_writable_dir
from pyrovae.runs.provenance import command_line, write_json

FAMILY = "vae"
VAE_CLASS = "pyrovae.models.vae.VAE"
REPORT = "report.json"
GRID = "imputation.png"
#: Images shown in the grid: the first 100 (all of them at the default --num-images).
GRID_IMAGES = 100
#: Images per row of the grid, each as three tiles: observed, imputed, truth.
GRID_PER_ROW = 5
#: The value a missing pixel is drawn with in the grid's "observed" column.
MISSING_GREY = 0.5


def checkpoint_dataset(checkpoint: dict, args: argparse.Namespace) -> str:
    """The data set to impute: ``--dataset``, else the one ``pyrovae vae train`` trained the
    checkpoint on. A VAE saved otherwise (``pyrovae.save_checkpoint``, the experiments) needs
    ``--dataset``; any other model is refused."""
    if checkpoint.get("model_class") == VAE_CLASS and args.dataset:
        return canonical_name(args.dataset)
    if checkpoint.get("model_class") == VAE_CLASS and not (
        (checkpoint.get("fit_config") or {}).get("user") or {}
    ).get("family"):
        raise common.UsageError(
            f"--checkpoint {args.checkpoint} holds a VAE not trained by 'pyrovae vae train': "
            "name its test images with --dataset"
        )
    options = common.training_options(checkpoint, args.checkpoint, FAMILY)
    return canonical_name(args.dataset) if args.dataset else options["dataset"]


def run(args: argparse.Namespace) -> int:
    device = common.resolve_device(args.device)
    out = check_writable_dir(args.out)
    dataset = checkpoint_dataset(read_checkpoint(args.checkpoint), args)
    if dataset not in common.GREY_DATASETS:
        raise common.UsageError(f"impute works on grey images, and {dataset} is in colour; "
                                f"choose a VAE trained on {', '.join(common.GREY_DATASETS)}")
    model = load_checkpoint(args.checkpoint, map_location=device)
    data = image_set(
        dataset, binarization="dynamic" if model.likelihood.name == "bernoulli" else "grey",
        seed=args.seed,
        train_size=1, test_size=args.num_images, device=device, **common.where(args),
    )
    if data.data_dim != model.data_dim:  # else a shape error that names no option
        raise common.UsageError(
            f"--checkpoint {args.checkpoint} holds a VAE of images of {model.data_dim} values, "
            f"and the images of {data.name} have {data.data_dim}: give the --dataset it was "
            "trained on"
        )
    height, width = data.image_shape
    if height != width:
        raise common.UsageError(f"--mask needs square images, {data.name} has {height}x{width}")
    model.check_data(data.test_x)
    x = data.test_x
    observed = make_mask(args.mask, x.shape[0], side=height, seed=args.seed).to(device)

    pyro.set_rng_seed(args.seed)
    started = time.perf_counter()
    result = impute(model, x, observed, args.method, num_samples=args.num_samples,
                    num_sweeps=args.num_sweeps)
    log_lik = missing_log_likelihood(model, result, x)
    seconds = time.perf_counter() - started

    n = x.shape[0]
    n_missing = (~observed).sum(1).double()
    mean = float(log_lik.mean())
    stderr = float(log_lik.std() / n**0.5) if n > 1 else float("nan")
    report = {
        "command": command_line(common.PROGRAM), "checkpoint": str(args.checkpoint),
        "dataset": data.name, "device": str(device), "mask": args.mask, "method": args.method,
        "num_images": n, "num_samples": args.num_samples, "num_sweeps": args.num_sweeps,
        "seed": args.seed, "missing_fraction": float((~observed).double().mean()),
        "missing_log_likelihood": mean, "missing_log_likelihood_stderr": stderr,
        "missing_log_likelihood_per_pixel": float((log_lik.double() / n_missing).mean()),
        "seconds": seconds, "grid": GRID,
    }
    if args.method == "importance":
        report["median_effective_sample_size"] = float(result.effective_sample_size.median())
    if result.acceptance_rate is not None:
        report["acceptance_rate"] = float(result.acceptance_rate)

    k = min(n, GRID_IMAGES)
    shown = torch.where(observed, x, torch.full_like(x, MISSING_GREY))
    grid = torch.stack([shown[:k], result.mean[:k], x[:k]], 1).flatten(0, 1)
    per_row = min(k, GRID_PER_ROW)
    common.save_grid(grid, data.image_shape, 3 * per_row, out / GRID,
              title=f"{args.method} imputation, {args.mask} mask: {data.name} test images "
              f"1-{k}{'' if k == n else f' of {n}'} (grey: missing)",
              col_labels=["observed", "imputed", "truth"] * per_row,
              row_labels=[f"{i + 1}-{min(i + per_row, k)}" for i in range(0, k, per_row)])
    write_json(out / REPORT, report)
    print(f"{args.method} on the {args.mask} mask: log-likelihood of the missing pixels "
          f"{mean:.3f} ± {stderr:.3f} nats/image ({n} images of {data.name}, "
          f"{report['missing_fraction']:.0%} missing); wrote {out / REPORT}, {out / GRID}")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """``pyrovae impute``."""
    parser = sub.add_parser(
        "impute", help="fill in missing pixels of test images with a VAE checkpoint",
        description="Impute the missing pixels (--mask) of the first --num-images test images "
        "by posterior inference in a VAE (--method) and score the true missing pixels, nats "
        "per image; --out gets report.json and imputation.png (observed, imputed, truth).",
    )
    parser.add_argument("--checkpoint", required=True,
                        help="a VAE checkpoint: RUN/last.pt of 'pyrovae vae train', or any "
                        "pyrovae.save_checkpoint of a VAE (then --dataset is needed)")
    parser.add_argument("--dataset", default=None, choices=common.GREY_DATASETS,
                        help="test images (default: the data set 'pyrovae vae train' used)")
    parser.add_argument("--mask", default="top", choices=PATTERNS,
                        help="missing pixels: top or bottom half, or a random 50%% or 80%% "
                        "(default top)")
    parser.add_argument("--method", default="importance", choices=METHODS,
                        help="importance (default), pseudo_gibbs or metropolis_gibbs")
    parser.add_argument("--num-images", type=common.positive_int, default=100,
                        help="first N test images (default 100)")
    parser.add_argument("--num-samples", type=common.positive_int, default=1000,
                        help="importance samples per image (importance; default 1000)")
    parser.add_argument("--num-sweeps", type=common.positive_int, default=200,
                        help="sweeps of each chain, the first half burn-in (chains; default 200)")
    parser.add_argument("--out", default="runs/impute",
                        help=f"folder for {REPORT} and {GRID} (default runs/impute)")
    common.add_device_seed(parser)
    common.add_data_options(parser)
    parser.set_defaults(run=run, memory_options=("--num-images", "--num-samples"))
    return parser
