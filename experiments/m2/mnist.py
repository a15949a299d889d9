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
import logging
import statistics
import time
from pathlib import Path

import torch

import pyrovae
from experiments.figures import save_learning_curve
from experiments.m2.common import train_m2
from pyrovae.runs import m2 as m2_family
from pyrovae.runs.provenance import evaluates, provenance, write_json
from pyrovae.runs.script import add_run_arguments, run_script, start_run

ANCHORS = {  # test error %, by number of labels
    "Kingma et al. 2014, M2": {100: 11.97, 600: 4.94, 1000: 3.60, 3000: 3.92},
    "Kingma et al. 2014, M1+M2": {100: 3.33, 3000: 2.18},
    "Siddharth et al. 2017": {3000: 1.57},
    "Pyro SS-VAE tutorial": {100: 6.81, 600: 5.63, 1000: 5.13, 3000: 4.18},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--n-labelled", type=int, nargs="+", default=[100])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--n-validation", type=int, default=10000, help="held-out validation images")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images (smoke)")
    p.add_argument("--m1", type=Path, default=None,
                   help="M1 VAE checkpoint: train M2 on its codes (M1+M2; MLP networks only)")
    p.add_argument("--code-likelihood", choices=["gaussian_learned", "gaussian"],
                   default="gaussian_learned", help="M2's likelihood of M1's codes (with --m1)")
    p.add_argument("--sigma", type=float, default=1.0, help="its fixed std for 'gaussian'")
    p.add_argument("--m1-min-std", type=float, default=0.1,
                   help="with --m1: keep only M1's active dimensions, those whose posterior mean "
                   "varies across the unlabelled images with a std above this (Kingma et al.: "
                   "0.1); 0 keeps all")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="time budget per run (default none); a later invocation with the same "
                   "--out resumes each run's last.pt")
    p.add_argument("--defer-test", action="store_true",
                   help="an invocation stopped by --max-minutes before --epochs reports no test "
                   "error (the test set is read once, when the run finishes; for runs resumed "
                   "in many invocations)")
    p.add_argument("--test-curve", action="store_true",
                   help="also record the test error of every epoch (diagnostic only: the "
                   "protocol looks at the test set once, for the selected model)")
    p.add_argument("--jit", action="store_true")
    add_run_arguments(p, out="runs/m2_mnist")
    m2_family.add_options(p)
    return argparse.Namespace(**m2_family.resolve(vars(p.parse_args(argv))))


def run(args: argparse.Namespace) -> dict:
    device = start_run(args)
    m1 = pyrovae.load_checkpoint(args.m1, map_location=device).eval() if args.m1 else None
    summary, runs = {}, []
    for n_labels in args.n_labelled:
        for seed in args.seeds:
            options = {**vars(args), "n_labelled": n_labels, "seed": seed}
            data = m2_family.data(options, m1=m1, device=device)
            torch.manual_seed(seed)
            codes = {} if m1 is None else dict(likelihood=args.code_likelihood, sigma=args.sigma)
            model = m2_family.build(options, data, **codes)
            batch_size, labelled_batch_size = m2_family.batch_sizes(options, data.num_train)
            info = dict(labels=n_labels, seed=seed, **provenance(device),
                        num_train=data.num_train, alpha=model.alpha, model_config=model.config,
                        m1=str(args.m1) if args.m1 else None, m1_min_std=args.m1_min_std,
                        m1_dims_kept=data.m1_dims_kept,
                        m1_num_dims_kept=None if m1 is None else len(data.m1_dims_kept),
                        preset=args.preset, objective=args.objective,
                        precision=args.precision, step_scheme=args.step_scheme,
                        lr_decay=args.lr_decay, threads=args.threads,
                        binarization=args.binarization, lr=args.lr, adam_betas=args.adam_betas,
                        batch_size=batch_size, labelled_batch_size=labelled_batch_size)
            run_dir = args.out / f"labels{n_labels}_seed{seed}"
            metrics = train_m2(model, data, run_dir, options, device=device, info=info,
                               minutes=args.max_minutes, test_curve=args.test_curve,
                               test_when_stopped=not args.defer_test)
            if not evaluates():
                continue  # the next fit needs every rank; only rank 0 reports
            result = (f"test error {100 * metrics['test_error']:.2f}% (validation-selected)"
                      if "test_error" in metrics else f"{metrics['epochs_done']} epochs so far")
            save_learning_curve(run_dir / "curve.png", metrics["curve"],
                                f"M2, {n_labels} labels, seed {seed}: {result}")
            if "test_error" in metrics:
                runs.append(finished_run(metrics))
            summary = summarise(runs, device)
            write_json(args.out / "metrics.json", summary)
            (args.out / "table.md").write_text(table(summary))
    return summary


def finished_run(metrics: dict) -> dict:
    """A cell of the table from the metrics its run returned (a run finished by an earlier
    invocation returns them again when it is resumed)."""
    keys = ("labels", "seed", "test_error", "best_epoch", "epochs_done", "wall_seconds",
            "cpu_seconds", "time_to_best_seconds", "status", "command")
    run = {k: metrics.get(k) for k in keys}
    run["seconds_per_epoch_median"] = statistics.median(row["seconds"] for row in metrics["curve"])
    return run


def summarise(runs: list[dict], device: torch.device) -> dict:
    by_labels = {}
    for n in sorted({r["labels"] for r in runs}):
        mine = [r for r in runs if r["labels"] == n]
        errors = [100 * r["test_error"] for r in mine]
        mean, std = statistics.mean(errors), statistics.stdev(errors) if len(errors) > 1 else 0.0
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
    run_script(lambda: run(parse_args()))
