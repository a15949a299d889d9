"""VAEs with latent sizes 2, 5, 10 and 20: samples side by side, and test ELBO / NLL per size.

One model per latent size, same architecture and training budget; the figure shows decoder
means of samples ``z ~ N(0, I)`` for each (Kingma & Welling's Figure 5), the table the test
ELBO with its reconstruction and KL terms and the importance-sampled NLL.

References:
    D. P. Kingma and M. Welling. Auto-encoding variational Bayes. ICLR 2014 (Fig. 5).

Example::

    python -m experiments.vae.latent_sizes --epochs 10 --out results/vae/latent_sizes
"""

from __future__ import annotations

import argparse

import torch

from experiments.common import command_line, machine, write_json
from experiments.figures import save_grids_side_by_side
from experiments.vae.common import (
    add_common_args,
    add_eval_args,
    data_from_args,
    setup,
    test_metrics,
    train_vae,
)


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| latent size | test ELBO | reconstruction | KL | NLL (K, images) | train s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sub = r["test"].get("subset")
        nll = (
            f"{sub['nll']:.2f} ± {sub['nll_stderr']:.2f} ({sub['num_importance_samples']}, "
            f"{sub['num_examples']})" if sub else "—"
        )
        t = r["test"]["all_test"]
        lines.append(
            f"| {r['latent_dim']} | {t['elbo']:.2f} | {t['reconstruction']:.2f} | {t['kl']:.2f} "
            f"| {nll} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, out="runs/vae_latent_sizes", epochs=10)
    add_eval_args(parser)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 5, 10, 20])
    parser.add_argument("--samples", type=int, default=100, help="images per panel")
    args = parser.parse_args(argv)
    out = setup(args)
    data = data_from_args(args)
    rows, panels = [], []
    for k in args.sizes:
        model, history, wall = train_vae(args, data, k, out / f"model_z{k}.pt")
        panels.append(model.sample(args.samples, generator=torch.Generator().manual_seed(0)))
        rows.append(dict(latent_dim=k, epochs=len(history), train_seconds=wall, history=history,
                         test=test_metrics(model, data, args.num_samples, args.eval_examples)))
        write_json(out / "metrics.json", dict(
            command=command_line(), machine=machine(args.device), dataset=data.name, arch=args.arch,
            likelihood=args.likelihood, runs=rows,
        ))
    nrow = int(round(args.samples**0.5))
    save_grids_side_by_side(out / "samples_by_latent_size.png", panels,
                            [f"{data.name}, {k}-D latent" for k in args.sizes],
                            data.image_shape, nrow=nrow)
    (out / "table.md").write_text(markdown_table(rows))


if __name__ == "__main__":
    main()
