"""Variance of the encoder's gradient: IWAE's estimator against DReG's, on Burda et al.'s VAE.

784-200-200-50 tanh VAE, one fixed batch of ``--batch`` binarised MNIST training images,
``--draws`` independent gradients of the K-sample bound per estimator (same seeds for both),
at initialisation and after ``--epochs`` epochs of IWAE training (batch 100). Reports, per
network, the total variance (summed over parameters) of each estimator and their ratio, and the
cosine between the two mean gradients (both estimate the same gradient).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/dreg_variance.py --out /tmp/dreg_variance.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from pyrovae import fit  # noqa: E402
from pyrovae.data import DynamicBinarized, binarize, load_dataset  # noqa: E402
from pyrovae.infer import make_objective, param_scope  # noqa: E402
from pyrovae.models.vae import VAE  # noqa: E402
from pyrovae.runs.provenance import command_line, machine  # noqa: E402


def gradients(vae: VAE, objective, x: torch.Tensor, draws: int) -> dict[str, torch.Tensor]:
    """``draws`` gradients [draws, P] per network (``encoder``, ``decoder``)."""
    names, params = zip(*vae.named_parameters(), strict=True)
    out: dict[str, list] = {"encoder": [], "decoder": []}
    with param_scope(vae):
        for seed in range(draws):
            pyro.set_rng_seed(seed)
            loss = objective.differentiable_loss(vae.model, vae.guide, x)
            grads = dict(zip(names, torch.autograd.grad(loss, params), strict=True))
            for net in out:
                out[net].append(torch.cat([g.flatten() for n, g in grads.items()
                                           if n.startswith(net)]))
    return {net: torch.stack(rows) for net, rows in out.items()}


def compare(vae: VAE, x: torch.Tensor, k: int, draws: int) -> dict:
    iwae = gradients(vae, make_objective("iwae", k), x, draws)
    dreg = gradients(vae, make_objective("iwae", k, dreg=True), x, draws)
    result = {}
    for net in iwae:
        v_iwae, v_dreg = iwae[net].var(0).sum().item(), dreg[net].var(0).sum().item()
        cosine = torch.nn.functional.cosine_similarity(iwae[net].mean(0), dreg[net].mean(0), 0)
        result[net] = dict(iwae_total_variance=v_iwae, dreg_total_variance=v_dreg,
                           ratio=v_iwae / v_dreg, cosine_of_means=cosine.item())
        logging.info("%s: total variance IWAE %.4g, DReG %.4g, ratio %.2f, cos(means) %.3f",
                     net, v_iwae, v_dreg, v_iwae / v_dreg, cosine.item())
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", default=None, help="a JSON file for the results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    torch.set_num_threads(1)
    pyro.enable_validation(False)
    train = load_dataset("mnist", "train", root=args.data_root).x
    x = binarize(train[: args.batch], 0)
    torch.manual_seed(0)
    vae = VAE(784, 50, hidden_sizes=(200, 200), activation="tanh")
    results = {"init": compare(vae, x, args.k, args.draws)}
    if args.epochs:
        fit(vae, DynamicBinarized(train, 0), objective="iwae", num_particles=args.k,
            epochs=args.epochs, batch_size=100, progress=False)
        results[f"after {args.epochs} epochs"] = compare(vae, x, args.k, args.draws)
    if args.out:
        Path(args.out).write_text(json.dumps(
            dict(command=command_line(), machine=machine(), k=args.k, batch=args.batch,
                 draws=args.draws, results=results), indent=1))


if __name__ == "__main__":
    main()
