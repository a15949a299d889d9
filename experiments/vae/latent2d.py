"""A VAE with a 2-D latent space: the learned manifold and the test set's latent means.

The manifold figure decodes a regular grid of the unit square mapped through the inverse normal
CDF (so each cell holds equal prior mass), as in Kingma & Welling's Figure 4; the scatter shows
the guide's posterior means of the test images coloured by their labels.

References:
    D. P. Kingma and M. Welling. Auto-encoding variational Bayes. ICLR 2014 (Fig. 4).

Example::

    python -m experiments.vae.latent2d --epochs 20 --out results/vae/latent2d
"""

from __future__ import annotations

import torch

from experiments.figures import save_image_grid, save_latent_scatter
from experiments.vae import common as vae
from pyrovae.runs.provenance import evaluates, write_json
from pyrovae.runs.script import run_script

FASHION = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Boot"]


def grid_values(n: int = 20, edge: float = 0.05) -> torch.Tensor:
    """``Phi^{-1}(u)`` for ``n`` values of u evenly spaced in [edge, 1-edge]: [n]."""
    return torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(edge, 1 - edge, n))


def save_manifold(path, images, name: str, image_shape, n: int = 20,
                  edge: float = 0.05) -> None:
    """The ``n`` x ``n`` decoder means of `manifold_grid`, columns labelled with z_1, rows with
    z_2."""
    values = grid_values(n, edge).tolist()
    save_image_grid(path, images, image_shape, nrow=n,
                    title=f"{name}: decoder means at z = Phi^-1(grid), z_1 across, z_2 down",
                    col_labels=[f"{v:.1f}" for v in values],
                    row_labels=[f"{v:.1f}" for v in reversed(values)])


def manifold_grid(model, n: int = 20, edge: float = 0.05) -> torch.Tensor:
    """Decoder means ``[n*n, D]`` on the grid ``Phi^{-1}(u)``, u in [edge, 1-edge]^2, with the
    second latent coordinate decreasing down the rows (so the picture matches the scatter)."""
    values = grid_values(n, edge)
    z1, z2 = torch.meshgrid(values, values.flip(0), indexing="xy")
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=-1)
    return model.decode(z.to(next(model.parameters())))


def main(argv=None) -> None:
    parser = vae.script_parser(__doc__.splitlines()[0], out="runs/vae_latent2d", epochs=20)
    parser.add_argument("--grid", type=int, default=20, help="manifold grid size (default 20)")
    args = parser.parse_args(argv)
    vae.refuse_datasets(args, ["celeba"], "attributes, not the classes that colour the "
                        "latent scatter; use svhn")
    out = vae.setup(args)
    data = vae.data_from_args(args)
    model, history, wall = vae.train_vae(args, data, 2, out / "model.pt")
    if not evaluates():
        return

    save_manifold(out / "manifold.png", manifold_grid(model, args.grid), data.name,
                  data.image_shape, args.grid)
    loc, _ = model.encode(data.test_x)
    names = FASHION if data.name == "fashion-mnist" else None
    save_latent_scatter(out / "latent_scatter.png", loc, data.test_y, class_names=names,
                        title=f"{data.name} test set: posterior means of q(z|x)")
    record = vae.trained_record(args, data, model, history, wall)
    write_json(out / "metrics.json", {**vae.run_header(args, data), **record})


if __name__ == "__main__":
    run_script(main)
