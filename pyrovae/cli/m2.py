"""``pyrovae m2 {train,resume,evaluate,sample}``: the semi-supervised M2 model.

``train`` fits M2 (Kingma et al. 2014) on a class-balanced labelled set and the rest of the
training images unlabelled, with ``pyrovae.fit``'s ``"enum"`` objective, keeping the model with
the best validation accuracy in ``best.pt``; ``resume`` continues a run; ``evaluate`` reports a
checkpoint's test error, unlabelled test bound and importance-sampled NLL; ``sample`` draws one
row of images per class with a shared style ``z`` per column.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import torch

from pyrovae.cli import _common as common
from pyrovae.cli._train import m2_metrics, save_grid, semi_supervised_set
from pyrovae.data.mnist import canonical_name
from pyrovae.infer import fit, load_checkpoint
from pyrovae.infer.checkpoint import read_checkpoint
from pyrovae.infer.classification import validation_callback
from pyrovae.models.m2 import M2

logger = logging.getLogger(__name__)
FAMILY = "m2"
GREY_DATASETS = ("mnist", "fashion-mnist", "digits")
#: data set -> (labelled examples, validation examples) by default.
DEFAULT_SPLIT = {"mnist": (100, 10_000), "fashion-mnist": (100, 10_000), "digits": (50, 200)}


# ----------------------------------------------------------------- the model: one place to adapt
def build_m2(options: dict[str, Any], data_dim: int, num_classes: int, num_train: int) -> M2:
    """The M2 the CLI trains, from its options (the one call of the constructor)."""
    return M2(
        data_dim=data_dim,
        num_classes=num_classes,
        latent_dim=options["latent_dim"],
        hidden_sizes=options["hidden_sizes"],
        classifier_arch=options["classifier_arch"],
        activation=options["activation"],
        alpha=options["alpha_factor"] * num_train,
        num_train=num_train,
    )


def m2_images(model: M2, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Decoder means ``E[x | y, z]`` [N, D] (the one call of the decoder)."""
    return model.decode(z, y)


# ----------------------------------------------------------------- subcommands
def train(args: argparse.Namespace) -> int:
    common.resolve_device(args.device)
    out = common.start_run_folder(args.out, FAMILY)
    dataset = canonical_name(args.dataset)
    n_labelled, n_validation = DEFAULT_SPLIT[dataset]
    options = {
        "family": FAMILY,
        "dataset": dataset,
        "n_labelled": args.n_labelled if args.n_labelled is not None else n_labelled,
        "n_validation": args.n_validation if args.n_validation is not None else n_validation,
        **{k: getattr(args, k) for k in (
            "limit", "latent_dim", "hidden_sizes", "classifier_arch", "activation",
            "alpha_factor", "epochs", "batch_size", "labelled_batch_size", "lr", "seed",
        )},
    }
    return _fit(args, out, options, resume=False)


def resume(args: argparse.Namespace) -> int:
    options = common.read_options(args.out, FAMILY)
    if args.epochs is not None:
        options["epochs"] = args.epochs
    args.batch_size = options["batch_size"]  # named by the out-of-memory message
    return _fit(args, common.check_writable_dir(args.out), options, resume=True)


def _data(options: dict[str, Any], args: argparse.Namespace, device: torch.device):
    return semi_supervised_set(
        options["dataset"], n_labelled=options["n_labelled"],
        n_validation=options["n_validation"], seed=options["seed"], limit=options["limit"],
        root=args.data_root, download=not args.no_download, device=device,
    )


def _fit(args: argparse.Namespace, out, options: dict[str, Any], resume: bool) -> int:
    device = common.resolve_device(args.device)
    data = _data(options, args, device)
    options["image_shape"] = list(data.image_shape)
    torch.manual_seed(options["seed"])
    model = build_m2(options, data.x_test.shape[1], data.num_classes, data.num_train)
    common.write_json(out / common.OPTIONS_FILE, options)
    started = time.perf_counter()
    history = fit(
        model, {"unlabelled": data.unlabelled, "labelled": data.labelled}, objective="enum",
        lr=options["lr"], epochs=options["epochs"],
        batch_size={"unlabelled": options["batch_size"],
                    "labelled": options["labelled_batch_size"]},
        seed=options["seed"], device=device,
        callbacks=[validation_callback(data.x_val, data.y_val)], checkpoint_dir=out,
        resume=resume, select_metric="val_accuracy", config=options,
        progress=common.progress_enabled(args),
    )
    seconds = time.perf_counter() - started
    best = history.best
    common.write_json(out / "train.json", {
        "command": common.command_line(), "options": options, "device": str(device),
        "seconds_this_invocation": seconds, "best_epoch": best["epoch"],
        "best_val_accuracy": best["val_accuracy"], "history": history.epochs,
    })
    print(f"M2 on {data.name} ({options['n_labelled']} labels): {len(history.epochs)} epochs "
          f"({seconds:.1f} s); best validation error {100 * (1 - best['val_accuracy']):.2f} % "
          f"at epoch {best['epoch']}: {out / 'best.pt'}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    device = common.resolve_device(args.device)
    report_path = common.check_writable_file(args.out) if args.out else None
    options = common.training_options(read_checkpoint(args.checkpoint), args.checkpoint, FAMILY)
    model = load_checkpoint(args.checkpoint, map_location=device)
    data = _data(options, args, device)
    x, y = data.x_test[: args.test_size], data.y_test[: args.test_size]
    torch.manual_seed(args.seed)
    metrics = m2_metrics(model, x, y, num_samples=args.num_samples,
                         eval_examples=args.eval_examples)
    print(f"test error {100 * metrics['test_error']:.2f} % ({metrics['num_examples']} images); "
          f"unlabelled bound U(x) {metrics['elbo']:.3f} nats/image")
    if "nll" in metrics:
        print(f"test NLL {metrics['nll']:.3f} ± {metrics['nll_stderr']:.3f} nats/image "
              f"(K={args.num_samples} importance samples, first {metrics['nll_examples']} images)")
    if report_path:
        common.write_json(report_path, {"command": common.command_line(),
                                        "checkpoint": str(args.checkpoint), **metrics})
        print(f"wrote {report_path}")
    return 0


def sample(args: argparse.Namespace) -> int:
    device = common.resolve_device(args.device)
    out = common.check_writable_file(args.out)
    options = common.training_options(read_checkpoint(args.checkpoint), args.checkpoint, FAMILY)
    model = load_checkpoint(args.checkpoint, map_location=device)
    generator = torch.Generator().manual_seed(args.seed)
    classes, columns = model.num_classes, args.per_class
    z = torch.randn(columns, model.latent_dim, generator=generator)
    z = z.repeat(classes, 1).to(device)  # row c, column j: class c in style j
    y = torch.arange(classes, device=device).repeat_interleave(columns)
    save_grid(m2_images(model, y, z), tuple(options["image_shape"]), columns, out)
    print(f"wrote {classes} x {columns} samples (one row per class) to {out}")
    return 0


# ----------------------------------------------------------------- options
def add_parser(sub) -> list[argparse.ArgumentParser]:
    """``pyrovae m2`` and its four subcommands; returns every parser (for ``-v``/``-q``)."""
    m2 = sub.add_parser("m2", help="train, resume, evaluate or sample semi-supervised M2",
                        description="Semi-supervised M2 (Kingma et al. 2014) with y summed out.")
    actions = m2.add_subparsers(dest="action", required=True)

    tr = actions.add_parser("train", help="train M2 into a run folder",
                            description="Train M2 with pyrovae.fit (TraceEnum_ELBO); the run "
                            "folder gets last.pt (resumable), best.pt (best validation accuracy), "
                            "options.json and train.json.")
    tr.add_argument("--dataset", default="mnist", choices=GREY_DATASETS,
                    help="data set (default mnist; digits is bundled and offline)")
    tr.add_argument("--n-labelled", type=common.positive_int, default=None,
                    help="labelled images, a multiple of 10 (default 100; digits 50)")
    tr.add_argument("--n-validation", type=common.positive_int, default=None,
                    help="validation images (default 10000; digits 200)")
    tr.add_argument("--limit", type=common.positive_int, default=None,
                    help="first N training and test images (default all)")
    tr.add_argument("--latent-dim", type=common.positive_int, default=50, help="K (default 50)")
    tr.add_argument("--hidden-sizes", type=common.positive_int, nargs="+", default=[500],
                    help="hidden widths of every network (default 500)")
    tr.add_argument("--classifier-arch", default="mlp", choices=["mlp", "conv"],
                    help="network of q(y|x): mlp (default) or conv (28x28 images)")
    tr.add_argument("--activation", default="softplus", help="nonlinearity (default softplus)")
    tr.add_argument("--alpha-factor", type=common.positive_float, default=0.1,
                    help="classifier weight alpha = factor x N_train (default 0.1)")
    tr.add_argument("--labelled-batch-size", type=common.positive_int, default=100,
                    help="labelled images per step (default 100)")
    common.add_train_basics(tr, out="runs/m2", epochs=10)
    tr.set_defaults(run=train, memory_options=("--batch-size", "--labelled-batch-size"))

    re = common.add_resume_parser(actions, FAMILY, resume)
    re.set_defaults(memory_options=("--batch-size",))

    ev = actions.add_parser("evaluate", help="test error, test bound and importance-sampled NLL",
                            description="Test error of argmax q(y|x), the unlabelled bound U(x) "
                            "and the importance-sampled NLL of a checkpoint (nats per image).")
    common.add_checkpoint_options(ev)
    ev.add_argument("--num-samples", type=common.non_negative_int, default=100,
                    help="importance samples K for the NLL (default 100; 0 skips it)")
    ev.add_argument("--eval-examples", type=common.positive_int, default=1000,
                    help="test images for the NLL (default 1000)")
    ev.add_argument("--test-size", type=common.positive_int, default=None,
                    help="first N test images (default all)")
    ev.add_argument("--out", default=None, help="also write the metrics to this JSON file")
    common.add_data_options(ev)
    ev.set_defaults(run=evaluate, memory_options=("--num-samples",))

    sa = actions.add_parser("sample", help="one row of images per class into a PNG",
                            description="Decoder means E[x|y,z]: one row per class y, one "
                            "style z from the prior per column.")
    common.add_checkpoint_options(sa)
    sa.add_argument("--per-class", type=common.positive_int, default=8,
                    help="images per class (default 8)")
    sa.add_argument("--out", default="m2_samples.png", help="PNG file (default m2_samples.png)")
    sa.set_defaults(run=sample, memory_options=("--per-class",))
    return [m2, tr, re, ev, sa]
