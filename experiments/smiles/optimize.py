"""Optimisation in the SMILES VAE's latent space (Gómez-Bombarelli et al. 2018).

Encodes ``--subset`` molecules of the model's training subset (guide means), scores them with
RDKit (``--property``: QED or penalised logP, see :mod:`pyrovae.metrics.molecules`), fits a
small property predictor on the codes, climbs it by gradient ascent from the codes of the
``--starts`` best of them (with a pull towards the prior), and decodes greedily every
``--record-every`` steps of every path. Reports the best and top-10 distinct valid molecules
found, against the training subset's best and top-10 and against as many greedy decodes of
random prior draws (:func:`pyrovae.infer.latent_optimization.random_search`). Every reported
value is RDKit's score of a decoded, valid molecule. Writes ``metrics.json`` and
``top_found.png``.

    python -m experiments.smiles.optimize --checkpoint runs/smiles/main/last.pt \
        --property qed --out runs/smiles/optimize

References:
    R. Gómez-Bombarelli et al. Automatic chemical design using a data-driven continuous
    representation of molecules. ACS Central Science 2018.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pyrovae.data.smiles import load_smiles
from pyrovae.infer import load_checkpoint, read_checkpoint
from pyrovae.runs import smiles as family
from pyrovae.runs.launch import add_device_options
from pyrovae.runs.provenance import provenance, write_json
from pyrovae.runs.script import run_script, start_device


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("runs/smiles/train/last.pt"))
    p.add_argument("--property", choices=["qed", "penalized_logp"], default="qed")
    p.add_argument("--subset", type=int, default=2000,
                   help="training molecules encoded and scored (default 2000)")
    p.add_argument("--starts", type=int, default=20, help="paths, from the best codes")
    p.add_argument("--steps", type=int, default=100, help="ascent steps per path")
    p.add_argument("--record-every", type=int, default=10, help="steps between decodes")
    p.add_argument("--lr", type=float, default=0.05, help="Adam's step in z")
    p.add_argument("--prior-weight", type=float, default=0.1,
                   help="pull towards the prior: maximise f(z) - w |z|^2 / 2")
    p.add_argument("--predictor-epochs", type=int, default=300)
    p.add_argument("--train-limit", type=int, default=None,
                   help="the training subset's size (default: the checkpoint's --train-limit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None, help="default: $PYROVAE_DATA")
    p.add_argument("--out", type=Path, default=Path("runs/smiles/optimize"))
    add_device_options(p)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = start_device(args)
    started = time.perf_counter()
    trained = (read_checkpoint(args.checkpoint).get("fit_config") or {}).get("user") or {}
    model = load_checkpoint(args.checkpoint, map_location=device).eval()
    # runs trained before the flag's rename stored "train_size"
    train_size = (args.train_limit or trained.get("train_limit") or trained.get("train_size")
                  or 100_000)
    pool = load_smiles("train", size=train_size, seed=trained.get("seed", 0),
                       root=args.data_root)
    found = family.latent_search(
        model, pool, args.property, subset=args.subset, starts=args.starts, steps=args.steps,
        record_every=args.record_every, lr=args.lr, prior_weight=args.prior_weight,
        predictor_epochs=args.predictor_epochs, seed=args.seed)
    top = found.pop("top")
    result = {
        **provenance(device),
        "checkpoint": str(args.checkpoint),
        "property": args.property,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        **found,
        "seconds": time.perf_counter() - started,
    }
    write_json(args.out / "metrics.json", result)
    if top:
        family.save_molecule_grid(args.out / "top_found.png", [s for s, _ in top],
                                  [f"{args.property} {v:.3f}" for _, v in top])
    print(f"{args.property}: training subset best {found['training_subset']['best']:.4f}, "
          f"latent search best {found['latent_search']['best']}, random prior best "
          f"{found['random_prior_same_decodes']['best']} "
          f"({found['latent_search']['decodes']} decodes each); wrote {args.out}")


if __name__ == "__main__":
    run_script(main)
