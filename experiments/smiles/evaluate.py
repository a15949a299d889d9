"""Evaluate a trained SMILES VAE: MOSES-style sample metrics, test reconstruction, latent figures.

Metrics (see :mod:`pyrovae.metrics.molecules` for the definitions): validity, unique@10k and
novelty (against the whole MOSES training split) of ``--samples`` molecules drawn with
``z ~ N(0, I)`` and temperature-``--temperature`` decoding; internal diversity of the valid
samples (Morgan fingerprints, radius 2, 1024 bits); greedy reconstruction accuracy of
``--reconstruct`` test molecules from the guide's mean; a one-sample ELBO estimate on them.
Also the guide's KL to the prior and its active units (posterior collapse).
Figures: molecules decoded along the line between two test molecules' codes, and a PCA of test
codes coloured by logP (or QED).

A CharRNN checkpoint (``pyrovae smiles train --model charrnn``, the VAE's baseline) gets the
same sample metrics and, in place of the reconstruction, KL and figures (it has no latent
code), its exact test NLL per molecule and per token on the same test molecules.

    python -m experiments.smiles.evaluate --checkpoint runs/smiles/main/last.pt \
        --out runs/smiles/eval
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pyro
import torch

from pyrovae.data.smiles import load_smiles
from pyrovae.infer import load_checkpoint, read_checkpoint
from pyrovae.metrics import molecules as chem
from pyrovae.runs import smiles as family
from pyrovae.runs.launch import add_device_options
from pyrovae.runs.provenance import provenance, write_json
from pyrovae.runs.script import run_script, start_device

#: MOSES paper (Polykovskiy et al. 2020), Table 2, its character-level VAE ("CharVAE").
MOSES_CHARVAE = {"validity": 0.977, "unique@10k": 0.998, "novelty": 0.695}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/smiles/train/last.pt"))
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--reconstruct", type=int, default=1000,
                        help="test molecules to encode and decode (default 1000)")
    parser.add_argument("--projection", type=int, default=2000,
                        help="test molecules in the PCA figure (default 2000)")
    parser.add_argument("--property", choices=["logp", "qed"], default="logp")
    parser.add_argument("--steps", type=int, default=8, help="molecules on the interpolation")
    parser.add_argument("--novelty-size", type=int, default=None,
                        help="training molecules to compare with (default: all 1.58 M)")
    parser.add_argument("--batch-size", type=int, default=1000, help="decoding batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="default: $PYROVAE_DATA")
    parser.add_argument("--out", type=Path, default=Path("runs/smiles/eval"))
    add_device_options(parser)
    return parser.parse_args(argv)


def save_projection(path: Path, codes: np.ndarray, values: np.ndarray, label: str) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centred = codes - codes.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ vt[:2].T
    explained = (singular[:2] ** 2 / np.sum(singular**2)).tolist()
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    points = ax.scatter(projected[:, 0], projected[:, 1], c=values, s=4, cmap="viridis")
    fig.colorbar(points, ax=ax, label=label)
    ax.set_xlabel(f"PC 1 ({explained[0]:.1%} of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.1%} of variance)")
    ax.set_title(f"guide means of {len(codes)} MOSES test molecules")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    finite = np.isfinite(values)
    correlations = [
        float(np.corrcoef(projected[finite, i], values[finite])[0, 1]) for i in range(2)
    ]
    return {"explained_variance": explained, "correlation_with_property": correlations}


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = start_device(args)
    started = time.perf_counter()
    pyro.set_rng_seed(args.seed)
    payload = read_checkpoint(args.checkpoint, map_location="cpu")
    model = load_checkpoint(args.checkpoint, map_location=device).eval()
    vocab = model.vocab
    timings = {}

    tick = time.perf_counter()
    samples = family.sample_molecules(model, args.samples, args.temperature, args.batch_size,
                                      args.seed)
    timings["sampling_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    train = load_smiles("train", size=args.novelty_size, seed=args.seed, root=args.data_root)
    metrics = family.sample_metrics(samples, train)
    timings["sample_metrics_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    pool = load_smiles("test", size=max(args.reconstruct, args.projection), seed=args.seed,
                       root=args.data_root)
    covered = family.covered_molecules(model, pool)
    targets = covered[: args.reconstruct]
    metrics |= family.test_metrics(model, targets, args.batch_size)
    metrics["test_molecules_outside_vocabulary"] = len(pool) - len(covered)
    timings["reconstruction_s"] = time.perf_counter() - tick

    args.out.mkdir(parents=True, exist_ok=True)
    figures = latent_figures(model, targets, covered, args) if model.latent_dim else {}
    history = payload.get("history") or [None]
    result = {
        **provenance(device),
        "checkpoint": str(args.checkpoint),
        "checkpoint_epoch": payload.get("epoch"),
        "checkpoint_step": payload.get("step"),
        "model_class": payload.get("model_class"),
        "model_config": {k: v for k, v in payload["model_config"].items() if k != "tokens"},
        "vocabulary": vocab.tokens,
        "training_config": (payload.get("fit_config") or {}).get("user"),
        "training_last_epoch": history[-1],
        "metrics": metrics,
        "anchor_moses_charvae": MOSES_CHARVAE,
        "samples_first_20": samples[:20],
        **figures,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "seconds": time.perf_counter() - started,
        "timings": timings,
    }
    write_json(args.out / "metrics.json", result)
    (args.out / "samples.txt").write_text("\n".join(samples) + "\n")
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in metrics.items()))
    print(f"wrote {args.out / 'metrics.json'}")


def latent_figures(model, targets: list[str], covered: list[str], args) -> dict:
    """The VAE's figures in ``args.out``: greedy decodings along the line between two test
    molecules' codes, and a PCA of test codes coloured by a property; their summaries."""
    ends = targets[:2]
    codes = model.encode(ends)[0]
    weights = torch.linspace(0, 1, args.steps, device=codes.device).unsqueeze(-1)
    path = (1 - weights) * codes[0] + weights * codes[1]
    line = model.generate_smiles(path, greedy=True)
    legends = [f"t={float(w):.2f}" + ("" if chem.to_molecule(s) else f" invalid: {s[:24]}")
               for w, s in zip(weights[:, 0], line, strict=True)]
    family.save_molecule_grid(args.out / "interpolation.png", [ends[0], *line, ends[1]],
                       ["start (input)", *legends, "end (input)"])
    projected = covered[: args.projection]
    test_codes = torch.cat([model.encode(projected[i : i + args.batch_size])[0]
                            for i in range(0, len(projected), args.batch_size)])
    values = chem.molecule_property(projected, args.property)
    projection = save_projection(
        args.out / f"latent_pca_{args.property}.png", test_codes.cpu().numpy(), values,
        {"logp": "Crippen logP", "qed": "QED"}[args.property],
    )

    return {"interpolation": {"start": ends[0], "end": ends[1], "decoded": line},
            "projection": {"property": args.property, **projection}}


if __name__ == "__main__":
    run_script(main)
