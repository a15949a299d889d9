"""Train a VAE for the ``uses`` experiments within a wall-time budget and save a checkpoint.

A Bernoulli VAE on dynamically binarised images (default 784-400-20 MLP, ReLU), Adam at
1e-3, batch 100, stopped by :class:`pyrovae.infer.TimeBudget` after ``--minutes``; the
checkpoint (``--out``/vae.pt) is what ``python -m experiments.uses.impute --checkpoint`` and
``python -m experiments.uses.anomaly`` load with :func:`pyrovae.load_checkpoint`.

Example (smoke)::

    python -m experiments.uses.train_vae --train-size 300 --epochs 1 --out /tmp/uses_vae
"""

from __future__ import annotations

import argparse

from pyrovae.runs import vae as vae_family
from pyrovae.runs.provenance import evaluates, provenance, save_checkpoint, write_json
from pyrovae.runs.script import add_run_arguments, run_script, start_script


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--data-root", default=None, help="default: $PYROVAE_DATA")
    vae_family.add_options(parser)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1000, help="upper bound on epochs")
    parser.add_argument("--minutes", type=float, default=None, help="wall-time budget")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    add_run_arguments(parser, out="runs/uses/vae_mnist", threads=1)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device, out = start_script(args)
    data = vae_family.data({**vars(args), "test_size": 1}, root=args.data_root, device=device)
    model = vae_family.build(vars(args), data)
    history, wall = vae_family.train(model, data.train, vars(args), device=device, out=out / "fit",
                                     minutes=args.minutes)
    if not evaluates():
        return 0
    info = {**provenance(device), "dataset": args.dataset, "arch": args.arch,
            "hidden": args.hidden_sizes, "latent": args.latent_dim, "epochs": len(history.epochs),
            "final_loss_per_example": history.epochs[-1]["loss_per_example"],
            "wall_seconds": wall}
    save_checkpoint(out / "vae.pt", model.cpu(), history=history.epochs, **info)
    write_json(out / "train.json", info)
    print(f"trained {len(history.epochs)} epochs in {wall:.0f} s -> {out / 'vae.pt'}")
    return 0


if __name__ == "__main__":
    run_script(main)
