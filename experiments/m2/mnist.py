"""Semi-supervised MNIST with M2: test error for several numbers of labels and seeds.

For every ``(labels, seed)``: a class-balanced labelled set drawn with that seed
(``pyrovae.data.labelled_split``), the rest of the training images unlabelled, 10000 held out for
validation. One ``TraceEnum_ELBO`` objective (labels enumerated exactly on unlabelled data, the
classifier term ``alpha * mean log q(y|x)`` on labelled data), one Adam step per pair of batches;
the model kept is the one with the best validation accuracy (``best.pt``); its test error is
reported. With ``--m1 M1.pt`` (a VAE from ``experiments.m2.m1``) M2 models M1's codes
z1 ~ q(z1 | x) with a diagonal Gaussian likelihood (learned or fixed variance,
``--code-likelihood``) instead of the pixels: Kingma et al.'s stacked M1+M2. Writes
``OUT/labels{n}_seed{s}/{metrics.json,curve.png,best.pt,last.pt}`` (metrics after every epoch),
``OUT/metrics.json`` (mean +- std over the seeds that finished) and ``OUT/table.md``.

References:
    D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling. Semi-supervised learning with deep
    generative models. NeurIPS 2014.
    N. Siddharth et al. Learning disentangled representations with semi-supervised deep
    generative models. NeurIPS 2017.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from pathlib import Path

import torch

import pyrovae
from experiments.common import (
    add_run_arguments,
    evaluates,
    parallel_options,
    provenance,
    start_run,
    write_json,
)
from experiments.figures import save_learning_curve
from experiments.m2.common import labelled_weight, mean_std, prepare_data, train_m2
from pyrovae.models.m2 import M2
from pyrovae.models.m2_presets import PRESETS, m2_preset

ANCHORS = {  # test error %, by number of labels
    "Kingma et al. 2014, M2": {100: 11.97, 600: 4.94, 1000: 3.60, 3000: 3.92},
    "Kingma et al. 2014, M1+M2": {100: 3.33, 3000: 2.18},
    "Siddharth et al. 2017": {3000: 1.57},
    "Pyro SS-VAE tutorial": {100: 6.81, 600: 5.63, 1000: 5.13, 3000: 4.18},
}


def preset_defaults(name: str) -> dict:
    """The command-line defaults that the preset ``name`` sets (flags given explicitly win)."""
    preset = m2_preset(name)
    model = preset.model
    return dict(
        binarization=preset.input, latent_dim=model["latent_dim"],
        hidden=list(model["hidden_sizes"]), arch=model["arch"],
        classifier_arch=model["classifier_arch"], activation=model["activation"],
        alpha_factor=preset.alpha_factor, alpha_per_labelled=preset.alpha_per_labelled,
        labelled_weight=str(model["labelled_weight"]), init_scale=model["init_scale"],
        analytic_kl=model["analytic_kl"],
        lr=preset.lr, adam_betas=list(preset.betas), batch_size=preset.batch_size,
        labelled_batch_size=preset.labelled_batch_size,
        batches_per_epoch=preset.batches_per_epoch, epochs=preset.epochs,
        objective=preset.objective, precision=preset.precision, threads=preset.threads,
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=PRESETS, default=None,
                   help="a paper's recipe (pyrovae.models.m2_presets): sets the defaults of the "
                   "options below; options given explicitly override it")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--labels", type=int, nargs="+", default=[100])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--validation", type=int, default=10000, help="held-out validation images")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images (smoke)")
    p.add_argument("--binarization", choices=["dynamic", "static", "grey", "none"],
                   default="dynamic",
                   help="training pixels binarised afresh every epoch, once, or kept as grey "
                   "levels in [0, 1] ('grey' = 'none': the papers' input, scored by the "
                   "Bernoulli likelihood with allow_continuous=True)")
    p.add_argument("--m1", type=Path, default=None,
                   help="M1 VAE checkpoint: train M2 on its codes (M1+M2; MLP networks only)")
    p.add_argument("--code-likelihood", choices=["gaussian_learned", "gaussian"],
                   default="gaussian_learned", help="M2's likelihood of M1's codes (with --m1)")
    p.add_argument("--sigma", type=float, default=1.0, help="its fixed std for 'gaussian'")
    p.add_argument("--m1-min-std", type=float, default=0.1,
                   help="with --m1: keep only M1's active dimensions, those whose posterior mean "
                   "varies across the unlabelled images with a std above this (Kingma et al.: "
                   "0.1); 0 keeps all")
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, nargs="+", default=[500])
    p.add_argument("--classifier-arch", choices=["mlp", "conv"], default="conv")
    p.add_argument("--arch", choices=["mlp", "conv"], default="mlp")  # encoder and decoder
    p.add_argument("--activation", default="relu")
    p.add_argument("--alpha-factor", type=float, default=0.1, help="alpha = factor * N_train")
    p.add_argument("--alpha-per-labelled", type=float, default=None,
                   help="alpha = this * N_labelled instead (Pyro's aux-loss multiplier)")
    p.add_argument("--analytic-kl", action=argparse.BooleanOptionalAction, default=False,
                   help="KL(q(z|x,y) || p(z)) in closed form (M2's analytic_kl; Kingma's code)")
    p.add_argument("--init-scale", type=float, default=None,
                   help="redraw every parameter from N(0, s^2) after construction (std s; "
                   "Kingma et al.: 1e-3); default: PyTorch's initialisation")
    p.add_argument("--labelled-weight", default="1",
                   help="weight w of the supervised bound: a number, or 'balanced' = N_u / N_l")
    p.add_argument("--epochs", type=int, default=300, help="maximum epochs per run")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="time budget per run (default none); a later invocation with the same "
                   "--out resumes each run's last.pt")
    p.add_argument("--batch-size", type=int, default=100, help="unlabelled images per step")
    p.add_argument("--labelled-batch-size", type=int, default=100)
    p.add_argument("--batches-per-epoch", type=int, default=None,
                   help="cut the unlabelled and the labelled set into this many batches each "
                   "(Kingma's scheme; overrides --batch-size/--labelled-batch-size)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--adam-betas", type=float, nargs=2, default=[0.9, 0.999])
    p.add_argument("--defer-test", action="store_true",
                   help="an invocation stopped by --max-minutes before --epochs reports no test "
                   "error (the test set is read once, when the run finishes; for runs resumed "
                   "in many invocations)")
    p.add_argument("--test-curve", action="store_true",
                   help="also record the test error of every epoch (diagnostic only: the "
                   "protocol looks at the test set once, for the selected model)")
    p.add_argument("--lr-decay", type=float, default=1.0, help="lr factor per epoch")
    p.add_argument("--jit", action="store_true")
    p.add_argument("--objective", choices=["enum", "sum_and_sample"], default="enum",
                   help="exact enumeration of the labels, or sum-and-sample (top 3 summed, one "
                   "sampled; unbiased, cheaper)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="fit's precision: bf16 autocast for the networks")
    add_run_arguments(p, out="runs/m2_mnist")
    known, _ = p.parse_known_args(argv)
    if known.preset is not None:
        p.set_defaults(**preset_defaults(known.preset))
    args = p.parse_args(argv)
    if args.binarization == "none":
        args.binarization = "grey"
    return args


def run(args: argparse.Namespace) -> dict:
    device = start_run(args)
    m1 = pyrovae.load_checkpoint(args.m1, map_location=device).eval() if args.m1 else None
    summary = {}
    for n_labels in args.labels:
        for seed in args.seeds:
            data = prepare_data(args.dataset, n_labels, args.validation, seed, args.binarization,
                                args.limit, m1=m1, device=device, m1_min_std=args.m1_min_std)
            torch.manual_seed(seed)
            alpha = (args.alpha_per_labelled * n_labels if args.alpha_per_labelled is not None
                     else args.alpha_factor * data.num_train)
            model = M2(
                data_dim=data.x_test.shape[1], num_classes=10, latent_dim=args.latent_dim,
                hidden_sizes=args.hidden, classifier_arch=args.classifier_arch,
                arch=args.arch,
                activation=args.activation, alpha=alpha,
                num_train=data.num_train,
                labelled_weight=labelled_weight(args.labelled_weight, data.num_train, n_labels),
                likelihood="bernoulli" if m1 is None else args.code_likelihood,
                sigma=args.sigma, allow_continuous=m1 is None and args.binarization == "grey",
                init_scale=args.init_scale, analytic_kl=args.analytic_kl,
            )
            batch_size, labelled_batch_size = batch_sizes(args, data.num_train, n_labels)
            info = dict(labels=n_labels, seed=seed, **provenance(device),
                        num_train=data.num_train, alpha=model.alpha, model_config=model.config,
                        m1=str(args.m1) if args.m1 else None, m1_min_std=args.m1_min_std,
                        m1_dims_kept=data.m1_dims_kept,
                        m1_num_dims_kept=None if m1 is None else len(data.m1_dims_kept),
                        preset=args.preset, objective=args.objective,
                        precision=args.precision,
                        binarization=args.binarization, lr=args.lr, adam_betas=args.adam_betas,
                        batch_size=batch_size, labelled_batch_size=labelled_batch_size)
            run_dir = args.out / f"labels{n_labels}_seed{seed}"
            metrics = train_m2(
                model, data, run_dir,
                max_epochs=args.epochs, max_minutes=args.max_minutes, batch_size=batch_size,
                labelled_batch_size=labelled_batch_size, lr=args.lr,
                lr_decay=args.lr_decay, seed=seed, jit=args.jit, info=info, device=device,
                betas=tuple(args.adam_betas), test_curve=args.test_curve,
                test_when_stopped=not args.defer_test, parallel=parallel_options(args),
                objective=args.objective, precision=args.precision,
            )
            if not evaluates():
                continue  # the next fit needs every rank; only rank 0 reports
            result = (f"test error {100 * metrics['test_error']:.2f}% (validation-selected)"
                      if "test_error" in metrics else f"{metrics['epochs_done']} epochs so far")
            save_learning_curve(run_dir / "curve.png", metrics["curve"],
                                f"M2, {n_labels} labels, seed {seed}: {result}")
            summary = summarise(finished_runs(args.out), device)
            write_json(args.out / "metrics.json", summary)
            (args.out / "table.md").write_text(table(summary))
    return summary


def batch_sizes(args: argparse.Namespace, num_train: int, n_labels: int) -> tuple[int, int]:
    """(unlabelled, labelled) images per step: fixed sizes, or both sets cut into
    ``--batches-per-epoch`` batches (Kingma's scheme; 100 at 100 labels for his preset)."""
    n = args.batches_per_epoch
    if args.preset is not None and n == m2_preset(args.preset).batches_per_epoch:
        return m2_preset(args.preset).batch_sizes(num_train - n_labels, n_labels)
    if n is None:
        return args.batch_size, args.labelled_batch_size
    return math.ceil((num_train - n_labels) / n), math.ceil(n_labels / n)


def finished_runs(out: Path) -> list[dict]:
    """Every run under ``out`` that reported a test error (this or earlier invocations)."""
    keys = ("labels", "seed", "test_error", "best_epoch", "epochs_done", "wall_seconds",
            "time_to_best_seconds", "status", "command")
    runs = []
    for path in sorted(out.glob("labels*_seed*/metrics.json")):
        metrics = json.loads(path.read_text())
        if "test_error" in metrics:
            run = {k: metrics.get(k) for k in keys}
            run["seconds_per_epoch_median"] = statistics.median(
                row["seconds"] for row in metrics["curve"])
            runs.append(run)
    return runs


def summarise(runs: list[dict], device: torch.device) -> dict:
    by_labels = {}
    for n in sorted({r["labels"] for r in runs}):
        mine = [r for r in runs if r["labels"] == n]
        mean, std = mean_std([100 * r["test_error"] for r in mine])
        by_labels[n] = dict(
            test_error_percent_mean=mean, test_error_percent_std=std,
            seeds=[r["seed"] for r in mine],
            test_error_percent=[100 * r["test_error"] for r in mine],
            epochs_to_best=[r["best_epoch"] + 1 for r in mine],
            epochs_done=[r["epochs_done"] for r in mine],
            seconds_per_epoch_median=statistics.median(r["seconds_per_epoch_median"] for r in mine),
            time_to_best_seconds=[r["time_to_best_seconds"] for r in mine],
        )
    return dict(**provenance(device), runs=runs, by_labels=by_labels,
                anchors=ANCHORS, finished_utc=time.strftime("%H:%M", time.gmtime()))


def table(summary: dict) -> str:
    labels = sorted({100, 600, 1000, 3000} | set(summary["by_labels"]))
    lines = ["| method | " + " | ".join(f"{n} labels" for n in labels) + " |",
             "|---" * (len(labels) + 1) + "|"]
    cells = []
    for n in labels:
        row = summary["by_labels"].get(n)
        if row is None:
            cells.append("not run")
        else:
            k = len(row["seeds"])
            spread = f" ± {row['test_error_percent_std']:.2f}" if k > 1 else ""
            cells.append(f"{row['test_error_percent_mean']:.2f}{spread} ({k} seed{'s' * (k > 1)})")
    lines.append("| pyrovae M2 (this run) | " + " | ".join(cells) + " |")
    for name, values in ANCHORS.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{values[n]:.2f}" if n in values else "–" for n in labels) + " |")
    lines += ["", f"Time ({summary['machine']}):", "",
              "| labels | seeds | epochs to the selected model | epochs run | training seconds "
              "to the selected model | median seconds per epoch |", "|---|---|---|---|---|---|"]
    for n, row in sorted(summary["by_labels"].items(), key=lambda item: int(item[0])):
        lines.append(
            f"| {n} | {len(row['seeds'])} | {', '.join(map(str, row['epochs_to_best']))} | "
            f"{', '.join(map(str, row['epochs_done']))} | "
            f"{', '.join(f'{s:.0f}' for s in row['time_to_best_seconds'])} | "
            f"{row['seconds_per_epoch_median']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # Denormal floats appear late in training and slow CPU steps down (a late 2-D M2
    # checkpoint: 0.14 s -> 0.10 s per 100-image step with flushing); flush them to zero.
    torch.set_flush_denormal(True)
    run(parse_args())
