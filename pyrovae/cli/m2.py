"""``pyrovae m2 {train,resume,evaluate,sample}``: the semi-supervised M2 model.

``train`` fits M2 (Kingma et al. 2014) on a class-balanced labelled set and the rest of the
training images unlabelled, with ``pyrovae.fit``'s ``"enum"`` objective, keeping the model with
the best validation accuracy in ``best.pt``; ``resume`` continues a run; ``evaluate`` reports a
checkpoint's test error, unlabelled test bound and importance-sampled NLL; ``sample`` draws one
row of images per class with a shared style ``z`` per column. Colour images (SVHN) keep their
grey levels, scored by the Bernoulli likelihood as continuous targets; CelebA has attributes,
not classes, and is refused.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch

from pyrovae.cli import _common as common
from pyrovae.data.mnist import canonical_name
from pyrovae.runs import folder
from pyrovae.runs import m2 as family

logger = logging.getLogger(__name__)
FAMILY = "m2"
#: data set -> (labelled examples, validation examples) by default; SVHN: the 1000 labels of
#: Kingma et al. (2014)'s SVHN experiment.
DEFAULT_SPLIT = {"mnist": (100, 10_000), "fashion-mnist": (100, 10_000), "digits": (50, 200),
                 "svhn": (1000, 10_000)}


# ----------------------------------------------------------------- subcommands
def train(args: argparse.Namespace) -> int:
    dataset = canonical_name(args.dataset)
    if dataset not in DEFAULT_SPLIT:
        raise common.UsageError(
            f"M2 needs class labels, and {dataset} has none (it has 40 binary attributes); "
            f"train a VAE on it: pyrovae vae train --dataset {dataset}"
        )
    n_labelled, n_validation = DEFAULT_SPLIT[dataset]
    out, options = common.start_training(
        args, FAMILY, ("preset", "limit", "seed", *family.PRESET_OPTIONS), dataset=dataset,
        n_labelled=args.n_labelled if args.n_labelled is not None else n_labelled,
        n_validation=args.n_validation if args.n_validation is not None else n_validation,
    )
    options = family.resolve(options)
    args.batch_size = options["batch_size"]  # the out-of-memory message names the values
    args.labelled_batch_size = options["labelled_batch_size"]
    with folder.releasing(out):
        return _fit(args, out, options, resume=False)


def _fit(args: argparse.Namespace, out, options: dict[str, Any], resume: bool) -> int:
    device = common.resolve_device(args.device)
    data = family.data(options, device=device, **common.where(args))
    options["image_shape"] = list(data.image_shape)
    torch.manual_seed(options["seed"])
    model = family.build(options, data)
    common.write_json(out / folder.OPTIONS_FILE, options)
    history, seconds = family.train(model, data, options, device=device, out=out, resume=resume,
                                    config=options, progress=common.progress_enabled(args))
    best = history.best
    common.write_train_report(out, options, device, seconds, history, best_epoch=best["epoch"],
                              best_val_accuracy=best["val_accuracy"])
    print(f"M2 on {data.name} ({options['n_labelled']} labels): {len(history.epochs)} epochs "
          f"({seconds:.1f} s); best validation error {100 * (1 - best['val_accuracy']):.2f} % "
          f"at epoch {best['epoch']}: {out / 'best.pt'}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    device, report_path, options, model = common.open_checkpoint(args, FAMILY, optional_out=True)
    data = family.data(options, device=device, **common.where(args))
    x, y = data.x_test[: args.test_size], data.y_test[: args.test_size]
    torch.manual_seed(args.seed)
    metrics = family.metrics(model, x, y, num_samples=args.num_samples,
                         eval_examples=args.eval_examples)
    print(f"test error {100 * metrics['test_error']:.2f} % ({metrics['num_examples']} images); "
          f"unlabelled bound U(x) {metrics['elbo']:.3f} nats/image")
    if "nll" in metrics:
        print(common.nll_line(metrics["nll"], metrics["nll_stderr"], args.num_samples,
                              metrics["nll_examples"]))
    common.write_report(report_path, args, metrics)
    return 0


def sample(args: argparse.Namespace) -> int:
    device, out, options, model = common.open_checkpoint(args, FAMILY)
    generator = torch.Generator().manual_seed(args.seed)
    classes, columns = model.num_classes, args.per_class
    z = torch.randn(columns, model.latent_dim, generator=generator)
    z = z.repeat(classes, 1).to(device)  # row c, column j: class c in style j
    y = torch.arange(classes, device=device).repeat_interleave(columns)
    return common.write_samples(
        model.decode(z, y), options, columns, out,
        f"{classes} x {columns} samples (one row per class)",
        title="M2 samples: a class y per row, a style z ~ N(0, I) per column",
        row_labels=[f"y = {c}" for c in range(classes)])


# ----------------------------------------------------------------- options
def add_parser(sub) -> list[argparse.ArgumentParser]:
    """``pyrovae m2`` and its four subcommands; returns every parser (for ``-v``/``-q``)."""
    m2, actions, tr = common.add_family_parser(
        sub, FAMILY, help="train, resume, evaluate or sample semi-supervised M2",
        description="Semi-supervised M2 (Kingma et al. 2014) with y summed out.",
        train_help="train M2 into a run folder",
        train_description="Train M2 with pyrovae.fit (TraceEnum_ELBO); the run folder gets "
        "last.pt (resumable), best.pt (best validation accuracy), options.json and train.json.",
    )
    tr.add_argument("--n-labelled", type=common.positive_int, default=None,
                    help="labelled images, a multiple of 10 (default 100; digits 50; svhn 1000)")
    tr.add_argument("--n-validation", type=common.positive_int, default=None,
                    help="validation images (default 10000; digits 200)")
    tr.add_argument("--limit", type=common.positive_int, default=None,
                    help="first N training and test images (default all)")
    family.add_options(tr)
    common.add_train_basics(tr, out="runs/m2", epochs=None)
    tr.set_defaults(run=train, memory_options=("--batch-size", "--labelled-batch-size"))

    re = common.add_resume_parser(actions, FAMILY, _fit, ("--batch-size",))

    ev = common.add_evaluate_parser(
        actions, evaluate, help="test error, test bound and importance-sampled NLL",
        description="Test error of argmax q(y|x), the unlabelled bound U(x) and the "
        "importance-sampled NLL of a checkpoint (nats per image).",
        num_samples=100, test_size_help="first N test images (default all)",
        checkpoint="runs/m2/best.pt",
    )

    sa = common.add_sample_parser(
        actions, sample, help="one row of images per class into a PNG",
        description="Decoder means E[x|y,z]: one row per class y, one style z from the prior "
        "per column.", out="m2_samples.png", memory_options=("--per-class",),
        checkpoint="runs/m2/best.pt",
    )
    sa.add_argument("--per-class", type=common.positive_int, default=8,
                    help="images per class (default 8)")
    return [m2, tr, re, ev, sa]
