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

import torch

from experiments.figures import save_grids_side_by_side
from experiments.vae import common as vae
from pyrovae.runs.provenance import evaluates, write_json
from pyrovae.runs.script import run_script


def save_samples(path, panels, name: str, sizes, image_shape) -> None:
    """One square grid of samples per latent size, side by side, each titled with its size."""
    nrow = int(round(len(panels[0]) ** 0.5))
    save_grids_side_by_side(path, panels, [f"{name}, {k}-D latent" for k in sizes], image_shape,
                            nrow=nrow)


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
    parser = vae.script_parser(__doc__.splitlines()[0], out="runs/vae_latent_sizes", epochs=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 5, 10, 20])
    parser.add_argument("--samples", type=int, default=100, help="images per panel")
    args = parser.parse_args(argv)
    out = vae.setup(args)
    data = vae.data_from_args(args)
    rows, panels = [], []
    evaluating = evaluates()  # the other ranks take part in every fit and evaluate nothing
    for k in args.sizes:
        model, history, wall = vae.train_vae(args, data, k, out / f"model_z{k}.pt")
        if not evaluating:
            continue
        panels.append(model.sample(args.samples, generator=torch.Generator().manual_seed(0)))
        rows.append(vae.trained_record(args, data, model, history, wall))
        write_json(out / "metrics.json", dict(**vae.run_header(args, data), runs=rows))
    if not evaluating:
        return
    save_samples(out / "samples_by_latent_size.png", panels, data.name, args.sizes,
                 data.image_shape)
    (out / "table.md").write_text(markdown_table(rows))


if __name__ == "__main__":
    run_script(main)
