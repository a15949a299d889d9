"""Reconstructions, latent interpolations and latent attribute directions of a trained VAE.

* Reconstructions: test images (top) and the decoder means at their posterior means (below).
* Interpolations: decoder means along straight lines between the posterior means of two test
  images of different classes.
* Attribute directions: a direction in latent space is the difference of the mean posterior
  means of two groups of training images (two classes, e.g. 1 -> 7; or the heaviest minus the
  lightest quarter by ink, "thickness"); images are decoded at ``mu(x) + t * direction``.

Runs on MNIST, Fashion-MNIST or SVHN (``--dataset``) with an MLP or a convolutional pair
(``--arch``).

References:
    D. P. Kingma and M. Welling. Auto-encoding variational Bayes. ICLR 2014.
    T. White. Sampling generative networks. arXiv:1609.04468, 2016 (attribute vectors).

Example::

    python -m experiments.vae.visualise --epochs 10 --latent-dim 20 --out results/vae/visualise
"""

from __future__ import annotations

import torch

from experiments.figures import save_image_rows
from experiments.vae import common as vae
from pyrovae.runs.provenance import evaluates, write_json
from pyrovae.runs.script import run_script


def first_of_each_class(y: torch.Tensor, classes) -> list[int]:
    return [int((y == c).nonzero()[0]) for c in classes if bool((y == c).any())]


def interpolate(model, x_a, x_b, steps: int = 10) -> torch.Tensor:
    """Decoder means at ``(1 - t) mu(x_a) + t mu(x_b)`` for ``steps`` values of t in [0, 1]."""
    (loc_a, _), (loc_b, _) = model.encode(x_a[None]), model.encode(x_b[None])
    t = torch.linspace(0, 1, steps, dtype=loc_a.dtype, device=loc_a.device)[:, None]
    return model.decode((1 - t) * loc_a + t * loc_b)


def group_direction(model, x: torch.Tensor, from_mask, to_mask) -> torch.Tensor:
    """Mean posterior mean of the ``to`` group minus that of the ``from`` group: [K]."""
    loc, _ = model.encode(x)
    return loc[to_mask].mean(0) - loc[from_mask].mean(0)


def along(model, x_start: torch.Tensor, direction: torch.Tensor, scales) -> torch.Tensor:
    loc, _ = model.encode(x_start[None])
    t = torch.as_tensor(scales, dtype=loc.dtype, device=loc.device)[:, None]
    return model.decode(loc + t * direction)


def save_reconstructions(path, originals, reconstructions, classes, image_shape) -> None:
    """Test images (top row) over their reconstructions, one column per class."""
    save_image_rows(path, [originals, reconstructions], ["data", "reconstruction"], image_shape,
                    title="test images and the decoder means at their posterior means",
                    col_labels=[f"class {c}" for c in classes])


def save_interpolations(path, rows, class_pairs, image_shape) -> None:
    """One row per pair of test images ``(class a, class b)``, t from 0 to 1 across."""
    steps = len(rows[0])
    save_image_rows(path, rows, [f"{a} -> {b}" for a, b in class_pairs], image_shape,
                    title="decode((1 - t) mu(x_a) + t mu(x_b)), t = 0 ... 1",
                    col_labels=[f"t={t:.2f}" for t in torch.linspace(0, 1, steps).tolist()])


def save_attribute_directions(path, rows, start_classes, class_pair, scales,
                              image_shape) -> None:
    """Rows along the class direction (``class_pair`` a -> b), then along the ink direction,
    from test images of ``start_classes``; t (``scales``) across."""
    a, b = class_pair
    labels = [f"{c}: +t({a}->{b})" for c in start_classes]
    labels += [f"{c}: +t(ink)" for c in start_classes]
    save_image_rows(path, rows, labels, image_shape,
                    title=f"decode(mu(x) + t d), t = {scales[0]:g} ... {scales[-1]:g}",
                    col_labels=[f"t={t:.2f}" for t in scales])


def main(argv=None) -> None:
    parser = vae.script_parser(__doc__.splitlines()[0], out="runs/vae_visualise", epochs=10)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--classes", type=int, nargs=2, default=[1, 7],
                        help="attribute direction from class a to class b (default 1 7)")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    vae.refuse_datasets(args, ["celeba"], "attributes, not the classes whose examples and "
                        "directions this script shows; use svhn")
    out = vae.setup(args)
    data = vae.data_from_args(args)
    model, history, wall = vae.train_vae(args, data, args.latent_dim, out / "model.pt")
    if not evaluates():
        return
    shape = data.image_shape

    # Reconstructions of the first test image of every class.
    picks = first_of_each_class(data.test_y, range(10))
    originals = data.test_x[picks]
    save_reconstructions(out / "reconstructions.png", originals, model.reconstruct(originals),
                         data.test_y[picks].tolist(), shape)

    # Interpolations between pairs of different classes.
    pairs = list(zip(picks[:-1:2], picks[1::2], strict=False))[:5]
    rows = [interpolate(model, data.test_x[a], data.test_x[b], args.steps) for a, b in pairs]
    save_interpolations(out / "interpolations.png", rows,
                        [(int(data.test_y[a]), int(data.test_y[b])) for a, b in pairs], shape)

    # Attribute directions from training images: class a -> class b, and light -> heavy ink.
    x_train = data.train_x[:10000]
    y_train = data.train_y[:10000]
    x_bin = data.train_images()[:10000]
    class_a, class_b = args.classes
    to_class = group_direction(model, x_bin, y_train == class_a, y_train == class_b)
    ink = x_train.sum(1)
    low, high = ink.quantile(0.25), ink.quantile(0.75)
    to_heavy = group_direction(model, x_bin, ink <= low, ink >= high)
    scales = torch.linspace(-1.5, 1.5, args.steps).tolist()
    starts = picks[:5]
    rows = [along(model, data.test_x[i], to_class, scales) for i in starts]
    rows += [along(model, data.test_x[i], to_heavy, scales) for i in starts]
    save_attribute_directions(out / "attribute_directions.png", rows,
                              data.test_y[starts].tolist(), (class_a, class_b), scales, shape)

    metrics = dict(
        **vae.run_header(args, data), **vae.trained_record(args, data, model, history, wall),
        attribute_scales=scales,
        direction_norms={"class": float(to_class.norm()), "ink": float(to_heavy.norm())},
    )
    write_json(out / "metrics.json", metrics)


if __name__ == "__main__":
    run_script(main)
