"""M2's step scheme on the CPU: one joint step per (unlabelled, labelled) pair, or alternating.

Both schemes optimise the same objective, Kingma et al.'s eq. (9) with Pyro's weighting
(``alpha = 46`` per labelled image; ``pyrovae.runs.m2_presets`` ``"pyro_ssvae"``: 784-500-50
softplus, grey levels, Adam 4.2e-4 with betas (0.95, 0.999), batches of 200), and differ only
in how an epoch's steps are cut:

* ``joint`` (what ``fit`` and the ``pyro_ssvae`` preset do): every step adds an unlabelled
  batch and a labelled batch, each scaled by N/M (an unbiased estimate of the whole objective);
  N_u / 200 steps per epoch, the labelled set cycled (``--labelled-batch-size 13`` at 3000
  labels: about once per epoch).
* ``alternating`` (Pyro's ``examples/vae/ss_vae_M2.py``): (N_u + N_l) / 200 steps per epoch,
  every 16th a labelled batch (its bound plus the classifier term), the others unlabelled
  batches; each step's loss is its batch's sum, unscaled, as Pyro's SVI steps are.

Prints and writes one JSON line per epoch (validation error, CPU seconds) to ``--out``.

Usage::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/m2_step_schemes.py --scheme joint \\
        --out runs/schemes/joint.jsonl --cpu-minutes 10
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

from pyrovae.infer import SumAndSampleELBO, make_objective  # noqa: E402
from pyrovae.infer.precision import autocast_networks  # noqa: E402
from pyrovae.runs.data import semi_supervised_set  # noqa: E402
from pyrovae.runs.m2_presets import m2_preset  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scheme", choices=["joint", "alternating"], required=True)
    p.add_argument("--labels", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objective", default="sum_and_sample",
                   help="'enum' or 'sum_and_sample' (top-3 summed, one sampled)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--labelled-batch-size", type=int, default=None,
                   help="joint: labelled images per step (default the preset's 200, which "
                   "cycles the labelled set N_u/N_l times per epoch; N_l * 200 / N_u visits it "
                   "once per epoch, as Kingma's scheme)")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam's learning rate (default the preset's 4.2e-4)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--cpu-minutes", type=float, default=10.0,
                   help="stop before an epoch that would pass this much process CPU time")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    pyro.enable_validation(False)
    preset = m2_preset("pyro_ssvae")
    data = semi_supervised_set("mnist", n_labelled=args.labels, n_validation=10000,
                               seed=args.seed, binarization="grey")
    (xu,), (xl, yl) = data.unlabelled, data.labelled
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    model = preset.build(data.num_train, args.labels)
    objective = (SumAndSampleELBO(topk=3) if args.objective == "sum_and_sample"
                 else make_objective(args.objective))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr or preset.lr, betas=preset.betas)
    device = torch.device("cpu")

    def step(loss_of) -> None:
        with autocast_networks(model, device, args.precision):
            loss = loss_of()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def unlabelled(idx, scaled):
        if scaled:
            return objective.differentiable_loss(model.model, model.guide, xu, subsample=idx)
        return objective.differentiable_loss(model.model, model.guide, xu[idx])

    def labelled(idx, scaled):
        if scaled:
            return objective.differentiable_loss(model.model, model.guide, xl, yl, subsample=idx)
        return objective.differentiable_loss(model.model, model.guide, xl[idx], yl[idx])

    batch = preset.batch_size
    labelled_batch = args.labelled_batch_size or preset.labelled_batch_size
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = args.out.open("w")
    labelled_order = torch.empty(0, dtype=torch.long)
    started, last_epoch_cpu = time.process_time(), 0.0
    for epoch in range(args.epochs):
        if time.process_time() - started + last_epoch_cpu > 60 * args.cpu_minutes:
            break
        epoch_start = time.process_time()
        u_batches = torch.randperm(xu.shape[0]).split(batch)
        if args.scheme == "joint":
            for iu in u_batches:
                if labelled_order.numel() < labelled_batch:
                    labelled_order = torch.cat([labelled_order, torch.randperm(xl.shape[0])])
                il = labelled_order[:labelled_batch]
                labelled_order = labelled_order[labelled_batch:]
                step(lambda iu=iu, il=il: unlabelled(iu, True) + labelled(il, True))
        else:
            l_batches = list(torch.randperm(xl.shape[0]).split(batch))
            total = len(u_batches) + len(l_batches)
            interval = total // len(l_batches)
            u_iter, l_iter = iter(u_batches), iter(l_batches)
            for i in range(total):
                if i % interval == 1 and l_batches:
                    il = next(l_iter, None)
                    if il is not None:
                        step(lambda il=il: labelled(il, False))
                        continue
                iu = next(u_iter, None)
                if iu is None:
                    il = next(l_iter)
                    step(lambda il=il: labelled(il, False))
                else:
                    step(lambda iu=iu: unlabelled(iu, False))
        last_epoch_cpu = time.process_time() - epoch_start
        model.eval()
        error = float((model.classify(data.x_val) != data.y_val).double().mean())
        model.train()
        row = dict(scheme=args.scheme, labelled_batch_size=labelled_batch, epoch=epoch + 1,
                   val_error_percent=100 * error,
                   epoch_cpu_seconds=last_epoch_cpu,
                   cpu_seconds=time.process_time() - started, objective=args.objective,
                   precision=args.precision, labels=args.labels, seed=args.seed,
                   lr=args.lr or preset.lr)
        out.write(json.dumps(row) + "\n")
        out.flush()
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
