"""The spread of M2's unlabelled-batch loss and gradient: exact enumeration against sum-and-sample.

On one batch of unlabelled MNIST images (grey levels), the same M2 (the ``cpu_fast`` preset's
networks, freshly initialised, or a trained one from ``--checkpoint``) is differentiated
``--draws`` times by each estimator. Reported per estimator: the mean and standard deviation of
the loss, the mean's distance from exact enumeration's in standard errors, the gradient's total
variance (trace of its covariance) and the classifier's share, and the seconds per estimate.
Both estimators sample z; sum-and-sample also samples one class beyond the top k.

Usage::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/m2_estimator_variance.py --draws 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

import pyrovae  # noqa: E402
from pyrovae.data import load_dataset  # noqa: E402
from pyrovae.infer import SumAndSampleELBO, make_objective  # noqa: E402
from pyrovae.runs.m2_presets import m2_preset  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=100)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--checkpoint", type=Path, default=None, help="a trained M2 (best.pt)")
    p.add_argument("--topk", type=int, nargs="+", default=[1, 3])
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)
    pyro.enable_validation(False)
    x = load_dataset("mnist", "train").x[-args.batch:]  # grey levels in [0, 1]
    if args.checkpoint is not None:
        model = pyrovae.load_checkpoint(args.checkpoint)
    else:
        torch.manual_seed(0)
        model = m2_preset("cpu_fast").build(num_train=50000, num_labelled=3000)
    model.train()
    classifier = torch.cat([torch.full((q.numel(),), name.startswith("classifier"))
                            for name, q in model.named_parameters()])
    estimators = {"enum": make_objective("enum")}
    estimators.update({f"sum_and_sample k={k}": SumAndSampleELBO(topk=k) for k in args.topk})
    with torch.no_grad():
        top = torch.softmax(model.classifier(x), -1).sort(-1, descending=True).values
    mass = {f"top{k}_mass_mean": float(top[:, :k].sum(-1).mean()) for k in args.topk}
    rows, exact = [], None
    pyro.set_rng_seed(0)
    for name, objective in estimators.items():
        values, grads = [], []
        started = time.process_time()
        for _ in range(args.draws):
            model.zero_grad(set_to_none=True)
            loss = objective.differentiable_loss(model.model, model.guide, x)
            loss.backward()
            values.append(float(loss.detach()))
            grads.append(torch.cat([q.grad.flatten() for q in model.parameters()]).double())
        seconds = (time.process_time() - started) / args.draws
        values, grads = torch.tensor(values, dtype=torch.float64), torch.stack(grads)
        variance = grads.var(0)
        row = dict(estimator=name, draws=args.draws, batch=args.batch,
                   loss_mean=float(values.mean()), loss_std=float(values.std()),
                   gradient_total_variance=float(variance.sum()),
                   classifier_gradient_variance=float(variance[classifier].sum()),
                   gradient_mean_norm=float(grads.mean(0).norm()),
                   cpu_seconds_per_estimate=seconds, **mass)
        if exact is None:
            exact = values
        else:
            se = (exact.var() / len(exact) + values.var() / len(values)).sqrt()
            row["mean_minus_enum_in_se"] = float((values.mean() - exact.mean()) / se)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(checkpoint=str(args.checkpoint), rows=rows),
                                       indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
