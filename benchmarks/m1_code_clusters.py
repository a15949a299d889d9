"""How well an M1 VAE's codes separate the digit classes, before any M2 is trained on them.

M1+M2 learns its classifier mostly from the cluster structure of M1's codes: M2 fits a
class-conditional density to the unlabelled codes and the few labels name the clusters. So the
codes bound what M1+M2 can reach. On the posterior means of M1's active dimensions (the M1+M2
pruning rule, ``--min-std``), with the labelled/validation/unlabelled split of
``experiments.m2.mnist`` for ``--labels`` and ``--seed``, this reports the validation error of

- classifiers on the labelled codes alone: logistic regression and 1-nearest-neighbour;
- a Gaussian mixture (full covariances, ``--components`` of them) fitted to unlabelled codes,
  each component named by the labelled codes' responsibilities ("labels"), and, as an upper
  bound on what naming can do, by the validation labels themselves ("oracle").

Usage::

    OMP_NUM_THREADS=1 python benchmarks/m1_code_clusters.py --m1 results/m2/m1/m1.pt \\
        --labels 100 --components 10 30 --out m1_clusters.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

import pyrovae  # noqa: E402
from pyrovae.data import load_dataset  # noqa: E402
from pyrovae.data.streams import active_dimensions, encode_in_chunks  # noqa: E402
from pyrovae.data.transforms import binarize, labelled_split  # noqa: E402
from pyrovae.runs.data import SEEDS  # noqa: E402
from pyrovae.runs.provenance import provenance  # noqa: E402


def _error(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(100.0 * (predicted != truth).mean())


def mixture_errors(codes_u, codes_l, y_l, codes_v, y_v, components: int, seed: int,
                   max_fit: int) -> dict[str, float]:
    """Validation error of a Gaussian mixture on unlabelled codes, its components named by the
    labelled codes (responsibility-weighted votes) and by the validation labels (oracle)."""
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(components, covariance_type="full", random_state=seed, max_iter=200)
    gmm.fit(codes_u[:max_fit])
    votes = gmm.predict_proba(codes_l).T @ np.eye(10)[y_l]          # [components, classes]
    assigned = gmm.predict(codes_v)
    oracle = np.array([np.bincount(y_v[assigned == j], minlength=10).argmax()
                       if (assigned == j).any() else 0 for j in range(components)])
    return {"labels": _error(votes.argmax(1)[assigned], y_v),
            "oracle": _error(oracle[assigned], y_v)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m1", type=Path, required=True, help="an M1 VAE checkpoint")
    p.add_argument("--labels", type=int, default=100)
    p.add_argument("--validation", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-std", type=float, default=0.1, help="M1+M2's pruning rule")
    p.add_argument("--components", type=int, nargs="+", default=[10, 30])
    p.add_argument("--max-fit", type=int, default=20000,
                   help="unlabelled codes the mixtures are fitted to")
    p.add_argument("--limit", type=int, default=None, help="first N training images")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = p.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    torch.manual_seed(args.seed)
    m1 = pyrovae.load_checkpoint(args.m1).eval()
    train = load_dataset("mnist", "train", root=args.data_root, limit=args.limit)
    split = labelled_split(train.y, args.labels, args.validation, args.seed, num_classes=10)
    # the codes M1+M2 sees: binarised images (as experiments.m2.mnist with --binarization dynamic)
    x = binarize(train.x, SEEDS["m1_activity"] + args.seed)
    with torch.no_grad():
        keep, _ = active_dimensions(m1, x[split.unlabelled], args.min_std)
        codes = encode_in_chunks(m1, x)[0][:, keep].numpy()
    y = train.y.numpy()
    idx_l, idx_v, idx_u = (s.numpy() for s in (split.labelled, split.validation,
                                               split.unlabelled))
    report = {"m1": str(args.m1), "labels": args.labels, "seed": args.seed,
              "min_std": args.min_std, "dims_kept": len(keep), "latent_dim": m1.latent_dim,
              "val_error_percent": {}}
    for name, clf in (("logistic_regression", LogisticRegression(max_iter=2000)),
                      ("nearest_neighbour", KNeighborsClassifier(1))):
        clf.fit(codes[idx_l], y[idx_l])
        report["val_error_percent"][name] = _error(clf.predict(codes[idx_v]), y[idx_v])
    for k in args.components:
        start = time.process_time()
        errors = mixture_errors(codes[idx_u], codes[idx_l], y[idx_l], codes[idx_v], y[idx_v],
                                k, args.seed, args.max_fit)
        report["val_error_percent"][f"mixture_{k}"] = errors
        report.setdefault("mixture_cpu_seconds", {})[str(k)] = time.process_time() - start
    report["provenance"] = provenance()
    print(json.dumps(report["val_error_percent"]), f"({len(keep)} of {m1.latent_dim} dims kept)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
