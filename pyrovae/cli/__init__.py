"""The ``pyrovae`` command: ``pyrovae ppca ...`` (and ``--help`` everywhere)."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path


def _ppca(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .ppca_comparison import compare_ppca, format_table, save_figures

    report, closed, model = compare_ppca(
        dataset=args.dataset,
        latent_dim=args.latent_dim,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        num_particles=args.num_particles,
        root=args.data_root,
        download=not args.no_download,
        device=args.device,
        eval_every=args.eval_every,
    )
    out = Path(args.out)
    image_shape = load_dataset(
        args.dataset, "test", root=args.data_root, download=False
    ).image_shape
    figures = save_figures(report, closed, model, image_shape, out)
    report["command"] = "pyrovae " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    report["figures"] = [f.name for f in figures]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"PPCA on {report['dataset']} (N={report['n']}, D={report['data_dim']}, "
        f"K={report['latent_dim']})"
    )
    print(format_table(report))
    print(f"wrote {out / 'report.json'} and {', '.join(str(f) for f in figures)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyrovae", description="Deep latent-variable models as Pyro model/guide pairs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log training progress")
    sub = parser.add_subparsers(dest="command", required=True)
    ppca = sub.add_parser(
        "ppca",
        help="fit PPCA by the closed form and by SVI, and compare them",
        description="Fit probabilistic PCA by its closed-form maximum-likelihood solution and by "
        "SVI, print both log-likelihoods side by side, and write figures and a JSON report.",
    )
    ppca.add_argument(
        "--dataset",
        default="digits",
        choices=["digits", "mnist", "fashion-mnist"],
        help="data set (default: digits, bundled with scikit-learn, works offline)",
    )
    ppca.add_argument("--latent-dim", type=int, default=10, help="K (default 10)")
    ppca.add_argument("--epochs", type=int, default=3000, help="SVI epochs (default 3000)")
    ppca.add_argument(
        "--lr",
        type=float,
        default=0.02,
        help="initial Adam step, cosine-decayed to 0 (default 0.02)",
    )
    ppca.add_argument(
        "--num-particles",
        type=int,
        default=4,
        help="vectorised ELBO samples per data point (default 4)",
    )
    ppca.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="minibatch size (default: the whole training set)",
    )
    ppca.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    ppca.add_argument(
        "--eval-every",
        type=int,
        default=10,
        help="epochs between exact log-likelihood evaluations (default 10)",
    )
    ppca.add_argument("--device", default=None, help="cpu or cuda (default cpu)")
    ppca.add_argument(
        "--data-root",
        default=None,
        help="folder holding MNIST/raw, FashionMNIST/raw (default $PYROVAE_DATA, "
        "else ~/.cache/pyrovae)",
    )
    ppca.add_argument(
        "--no-download",
        action="store_true",
        help="fail with a clear error instead of downloading missing data",
    )
    ppca.add_argument("--out", default="runs/ppca", help="output folder (default runs/ppca)")
    ppca.set_defaults(run=_ppca)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"pyrovae: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
