"""Out-of-distribution detection with a VAE's likelihood: MNIST vs Fashion-MNIST, both ways.

Each model (one trained on binarised MNIST, one on binarised Fashion-MNIST) scores the test
images of both data sets with the importance-sampled ``-log p(x)``
(:func:`pyrovae.infer.anomaly.anomaly_scores`, K = ``--num-samples``); the ROC AUC
(:func:`pyrovae.infer.anomaly.roc_auc`) measures how well the score separates the model's own
test images (negatives) from the other set's (positives). An AUC below 0.5 is the known failure
of likelihood scores (Nalisnick et al. 2019). Writes ``anomaly.json`` and ``ood_histograms.png``.

Example (smoke)::

    python -m experiments.uses.anomaly --checkpoints mnist=/tmp/uses_vae/vae.pt \
        fashion-mnist=/tmp/uses_vae/vae.pt --num-images 20 --num-samples 10 --out /tmp/uses_ood
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro
import torch

from pyrovae import load_checkpoint
from pyrovae.data import load_dataset
from pyrovae.infer.anomaly import anomaly_scores, roc_auc
from pyrovae.runs.data import test_images
from pyrovae.runs.provenance import provenance, write_json
from pyrovae.runs.script import add_run_arguments, run_script, start_script


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", required=True,
                        help="DATASET=PATH for each model (mnist=..., fashion-mnist=...)")
    parser.add_argument("--data-root", default=None, help="default: $PYROVAE_DATA")
    parser.add_argument("--num-images", type=int, default=1000, help="first N test images")
    parser.add_argument("--num-samples", type=int, default=500, help="K for -log p(x)")
    parser.add_argument("--seed", type=int, default=0)
    add_run_arguments(parser, out="runs/uses/anomaly", threads=1)
    return parser.parse_args(argv)


def save_histograms(path: Path, scores: dict, aucs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scores), figsize=(5 * len(scores), 3.4), squeeze=False)
    for ax, (trained_on, by_set) in zip(axes[0], scores.items(), strict=True):
        every = torch.cat(list(by_set.values())).cpu()
        bins = torch.linspace(float(every.min()), float(every.max()), 61).numpy()
        for name, values in by_set.items():
            ax.hist(values.cpu().numpy(), bins=bins, alpha=0.55, density=True,
                    label=f"{name} test")
        ax.set_title(f"VAE trained on {trained_on}: AUC {aucs[trained_on]:.3f}", fontsize=9)
        ax.set_xlabel("-log p(x) (nats)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    device, out = start_script(args, log=False)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoints)
    data = {name: test_images(load_dataset(name, "test", root=args.data_root).x[: args.num_images],
                           "dynamic").to(device) for name in checkpoints}
    scores, aucs, table = {}, {}, {}
    for trained_on, path in checkpoints.items():
        model = load_checkpoint(path, map_location=device)
        pyro.set_rng_seed(args.seed)
        started = time.perf_counter()
        scores[trained_on] = {name: anomaly_scores(model, x, num_samples=args.num_samples)
                              for name, x in data.items()}
        seconds = time.perf_counter() - started
        own = scores[trained_on][trained_on]
        others = {name: s for name, s in scores[trained_on].items() if name != trained_on}
        row = {"checkpoint": path, "seconds": seconds,
               "mean_nll": {name: float(s.mean()) for name, s in scores[trained_on].items()},
               "auc": {name: roc_auc(own, s) for name, s in others.items()}}
        aucs[trained_on] = next(iter(row["auc"].values()), float("nan"))
        table[trained_on] = row
        print(f"trained on {trained_on}: mean NLL {row['mean_nll']}, AUC {row['auc']}, "
              f"{seconds:.0f} s")
    payload = {**provenance(device), "num_images": args.num_images,
               "num_importance_samples": args.num_samples, "models": table}
    write_json(out / "anomaly.json", payload)
    save_histograms(out / "ood_histograms.png", scores, aucs)
    print(f"wrote {out / 'anomaly.json'}")
    return 0


if __name__ == "__main__":
    run_script(main)
