"""``pyrovae vae {train,resume,evaluate,sample}``: a VAE on binarised (or grey-level) images,
or on colour images (SVHN, CelebA), which are never binarised.

``train`` fits a VAE with ``pyrovae.fit`` into a run folder (``last.pt``, ``options.json``,
``train.json``), logging the test ELBO every ``--eval-every`` epochs; ``resume`` continues it;
``evaluate`` reports the test ELBO and the importance-sampled NLL of a checkpoint; ``sample``
draws images from one into a PNG grid.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch

from pyrovae.cli import _common as common
from pyrovae.data.mnist import canonical_name
from pyrovae.runs import folder
from pyrovae.runs import vae as family

logger = logging.getLogger(__name__)
FAMILY = "vae"


# ----------------------------------------------------------------- subcommands
def train(args: argparse.Namespace) -> int:
    out, options = common.start_training(args, FAMILY, (
        "latent_dim", "hidden_sizes", "arch", "activation", "likelihood", "sigma", "objective",
        "num_particles", "epochs", "batch_size", "lr", "train_size", "test_size", "eval_every",
        "seed",
    ), dataset=canonical_name(args.dataset), image_size=args.image_size,
        **family.model_options(vars(args)))
    with folder.releasing(out):
        return _fit(args, out, options, resume=False)


def _fit(args: argparse.Namespace, out, options: dict[str, Any], resume: bool) -> int:
    device = common.resolve_device(args.device)
    data = family.data(options, device=device, **common.where(args))
    options["image_shape"] = list(data.image_shape)
    if options["likelihood"] == "bernoulli" and not data.binarized:
        logger.info("%s is in colour: its grey levels are not binarised; the Bernoulli "
                    "likelihood scores them as continuous targets (not a normalised density)",
                    data.name)
    torch.manual_seed(options["seed"])
    model = family.build(options, data)
    model.check_data(data.test_x)
    test_elbo = family.test_elbo_callback(data.test_x, options["eval_every"], options["epochs"])

    common.write_json(out / folder.OPTIONS_FILE, options)
    history, seconds = family.train(
        model, data.train, options, device=device, out=out, resume=resume, callbacks=[test_elbo],
        config=options, progress=common.progress_enabled(args),
    )
    final = next((r["test_elbo"] for r in reversed(history.epochs) if "test_elbo" in r), None)
    common.write_train_report(out, options, device, seconds, history, test_elbo=final)
    print(f"VAE (K={options['latent_dim']}) on {data.name}: {len(history.epochs)} epochs, "
          f"test ELBO {final:.3f} nats/image ({seconds:.1f} s); checkpoint {out / 'last.pt'}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    device, report_path, options, model = common.open_checkpoint(args, FAMILY, optional_out=True)
    test_size = args.test_size if args.test_size is not None else options["test_size"]
    data = family.data(options, train_size=1, test_size=test_size, device=device,
                       **common.where(args))
    torch.manual_seed(args.seed)
    metrics = family.metrics(model, data.test_x, num_samples=args.num_samples,
                          elbo_samples=args.elbo_samples, eval_examples=args.eval_examples)
    every = metrics["all_test"]
    print(f"test ELBO {every['elbo']:.3f} nats/image (reconstruction "
          f"{every['reconstruction']:.3f}, KL {every['kl']:.3f}; {every['num_examples']} images, "
          f"{args.elbo_samples} samples each)")
    if "subset" in metrics:
        s = metrics["subset"]
        print(common.nll_line(s["nll"], s["nll_stderr"], args.num_samples, s["num_examples"]))
    common.write_report(report_path, args, metrics)
    return 0


def sample(args: argparse.Namespace) -> int:
    device, out, options, model = common.open_checkpoint(args, FAMILY)
    generator = torch.Generator().manual_seed(args.seed)
    images = model.sample(args.num, mean=True, generator=generator)
    return common.write_samples(
        images, options, args.columns, out, f"{args.num} samples",
        title=f"VAE samples: decoder means E[x|z], z ~ N(0, I) ({options['dataset']})")


# ----------------------------------------------------------------- options
def add_parser(sub) -> list[argparse.ArgumentParser]:
    """``pyrovae vae`` and its four subcommands; returns every parser (for ``-v``/``-q``)."""
    vae, actions, tr = common.add_family_parser(
        sub, FAMILY, help="train, resume, evaluate or sample a VAE",
        description="A VAE (Kingma & Welling 2014) on grey images (mnist, fashion-mnist, "
        "digits; binarised for the Bernoulli likelihood) or colour ones (svhn, celeba; never "
        "binarised).",
        train_help="train a VAE into a run folder",
        train_description="Train a VAE with pyrovae.fit; the run folder gets last.pt "
        "(resumable), options.json and train.json.",
    )
    family.add_options(tr)
    tr.add_argument("--latent-dim", type=common.positive_int, default=20, help="K (default 20)")
    tr.add_argument("--objective", default="elbo", choices=["elbo", "iwae"],
                    help="elbo (default) or iwae (with --num-particles K)")
    tr.add_argument("--num-particles", type=common.positive_int, default=1,
                    help="samples per image, vectorised (default 1)")
    tr.add_argument("--eval-every", type=common.positive_int, default=1,
                    help="epochs between test ELBO evaluations (default 1)")
    common.add_train_basics(tr, out="runs/vae", epochs=10)
    tr.set_defaults(run=train, memory_options=("--batch-size", "--num-particles"))

    re = common.add_resume_parser(actions, FAMILY, _fit, ("--batch-size", "--num-particles"))

    ev = common.add_evaluate_parser(
        actions, evaluate, help="test ELBO and importance-sampled NLL",
        description="Test ELBO (all test images) and the importance-sampled NLL (the first "
        "--eval-examples) of a checkpoint, nats per image.",
        num_samples=1000, test_size_help="first N test images (default: as in training)",
        checkpoint="runs/vae/last.pt",
    )
    ev.add_argument("--elbo-samples", type=common.positive_int, default=10,
                    help="samples per image for the ELBO (default 10)")

    sa = common.add_sample_parser(
        actions, sample, help="draw images from a checkpoint into a PNG",
        description="Decoder means E[x|z] for z from the prior, as a grid.",
        out="samples.png", memory_options=("--num",), checkpoint="runs/vae/last.pt",
    )
    sa.add_argument("--num", type=common.positive_int, default=64, help="images (default 64)")
    sa.add_argument("--columns", type=common.positive_int, default=8, help="grid width (8)")
    return [vae, tr, re, ev, sa]
