"""Baseline for M1+M2: M2's classifier network trained on the labelled M1 codes alone.

The same inputs as ``experiments.m2.mnist --m1`` (fresh draws of M1's ``q(z1 | x)`` every epoch
for the labelled images, posterior means for validation and test), the same network as M2's
``q(y|x)`` (an MLP with softplus hidden layers) and the same validation selection, but no
generative model and no unlabelled images: cross-entropy on the labelled set only. The
difference between the two test errors is what M2's unsupervised term adds to the codes.

Writes ``OUT/labels{n}_seed{s}.json`` (validation accuracy per epoch, test error of the
validation-selected network) and ``OUT/metrics.json`` (mean +- std over the seeds).

Example (smoke)::

    python -m experiments.m2.m1_baseline --m1 runs/m1_mnist/m1.pt --dataset digits \\
        --n-labelled 20 --n-validation 100 --epochs 3 --out /tmp/m1_baseline
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import pyrovae
from pyrovae.infer.classification import accuracy
from pyrovae.models.networks import mlp
from pyrovae.runs.data import semi_supervised_set
from pyrovae.runs.provenance import provenance, write_json
from pyrovae.runs.script import add_run_arguments, run_script, start_run


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m1", type=Path, required=True, help="M1 VAE checkpoint (experiments.m2.m1)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--n-labelled", type=int, nargs="+", default=[100])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--n-validation", type=int, default=10000)
    p.add_argument("--hidden-sizes", type=int, nargs="+", default=[500])
    p.add_argument("--activation", default="softplus")
    p.add_argument("--epochs", type=int, default=300, help="passes over the labelled set")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--binarization", choices=["dynamic", "grey"], default="dynamic",
                   help="images M1 encodes: binarised afresh every epoch, or grey levels (the "
                   "papers' input; use what the M1 was trained on)")
    p.add_argument("--m1-min-std", type=float, default=0.1,
                   help="keep only M1's active dimensions, as experiments.m2.mnist --m1 does "
                   "(posterior-mean std above this; Kingma et al.: 0.1); 0 keeps all")
    add_run_arguments(p, out="runs/m1_baseline")
    return p.parse_args(argv)


def train_classifier(data, args, seed: int) -> dict:
    torch.manual_seed(seed)
    net = mlp([data.x_test.shape[1], *args.hidden_sizes, 10], args.activation)
    net = net.to(data.x_test.device)

    def classify(v):
        return net(v).argmax(-1)

    optimiser = torch.optim.Adam(net.parameters(), lr=args.lr)
    best, curve = (-1.0, None, -1), []
    started = time.perf_counter()
    for epoch in range(args.epochs):
        x, y = data.labelled.for_epoch(epoch)
        for rows in torch.randperm(len(y)).to(y.device).split(args.batch_size):
            optimiser.zero_grad()
            F.cross_entropy(net(x[rows]), y[rows]).backward()
            optimiser.step()
        with torch.no_grad():
            val = accuracy(classify, data.x_val, data.y_val)
        curve.append(dict(epoch=epoch, val_accuracy=val))
        if val > best[0]:
            best = (val, copy.deepcopy(net.state_dict()), epoch)
    net.load_state_dict(best[1])
    with torch.no_grad():
        error = 1.0 - accuracy(classify, data.x_test, data.y_test)
    return dict(test_error=error, best_epoch=best[2], best_val_accuracy=best[0], curve=curve,
                wall_seconds=time.perf_counter() - started)


def run(args: argparse.Namespace) -> dict:
    device = start_run(args)
    m1 = pyrovae.load_checkpoint(args.m1, map_location=device).eval()
    summary = dict(**provenance(device), by_labels={})
    for n_labels in args.n_labelled:
        errors = []
        for seed in args.seeds:
            data = semi_supervised_set(
                args.dataset, n_labelled=n_labels, n_validation=args.n_validation, seed=seed,
                binarization=args.binarization, m1=m1, device=device,
                m1_min_std=args.m1_min_std)
            result = dict(labels=n_labels, seed=seed, binarization=args.binarization,
                          m1_min_std=args.m1_min_std, m1_dims_kept=data.m1_dims_kept,
                          **train_classifier(data, args, seed))
            write_json(args.out / f"labels{n_labels}_seed{seed}.json", result)
            errors.append(100 * result["test_error"])
        mean, std = statistics.mean(errors), statistics.stdev(errors) if len(errors) > 1 else 0.0
        summary["by_labels"][n_labels] = dict(seeds=args.seeds, test_error_percent=errors,
                                              test_error_percent_mean=mean,
                                              test_error_percent_std=std)
        write_json(args.out / "metrics.json", summary)
    return summary


if __name__ == "__main__":
    run_script(lambda: run(parse_args()))
