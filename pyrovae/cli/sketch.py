"""``pyrovae sketch {train,resume,evaluate,sample,complete}``: SketchRNN (Ha & Eck 2018) on a
sketch-rnn data set of vector drawings.

``train`` fits it with the paper's recipe (`pyrovae.runs.sketch`) into a run folder
(``last.pt``, ``options.json``, ``train.json``, the curve and ``metrics.csv``, sample,
reconstruction and interpolation figures), with the test reconstruction loss and KL after every
epoch; ``resume`` continues it; ``evaluate`` reports a checkpoint's test metrics; ``sample``
draws sketches from the prior into a PNG; ``complete`` finishes test sketches from their first
strokes.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

import torch

from pyrovae.cli import _common as common
from pyrovae.data.sketches import SKETCH_DATASETS
from pyrovae.models.sketch_rnn import PEN_LOSSES, SketchRNN
from pyrovae.runs import folder, sketch_figures
from pyrovae.runs import sketch as family
from pyrovae.runs.launch import fraction
from pyrovae.runs.provenance import write_json

FAMILY = "sketch"
CHECKPOINT = "runs/sketch/last.pt"  # what `train` writes with its default --out
MODEL_KEYS = ("latent_dim", "encoder_size", "decoder_size", "num_mixtures", "max_length",
              "pen_loss", "w_kl", "kl_eta_min", "kl_rate", "kl_min")
TRAIN_KEYS = ("train_limit", "test_limit", "epochs", "batch_size", "bucket_pool", "lr",
              "lr_decay", "min_lr", "clip_value", "clip_norm", "random_scale", "dequantize", "seed")


# ----------------------------------------------------------------- subcommands
def train(args: argparse.Namespace) -> int:
    out, options = common.start_training(args, FAMILY, (*MODEL_KEYS, *TRAIN_KEYS),
                                         dataset=args.dataset)
    with folder.releasing(out):
        return _fit(args, out, options, resume=False)


def _fit(args: argparse.Namespace, out: Path, options: dict[str, Any], resume: bool) -> int:
    if resume:  # a run that predates the noise options goes on without noise, as it began
        options = {**family.BEFORE_NOISE_OPTIONS, **options}
    device = common.resolve_device(args.device)
    sketches = family.data(options, device=device, **common.where(args))
    torch.manual_seed(options["seed"])
    model = family.build(options, device)
    write_json(out / folder.OPTIONS_FILE, options)
    history, seconds = family.train(model, sketches, options, device=device, out=out,
                                    resume=resume, config=options,
                                    progress=common.progress_enabled(args))
    final = history.epochs[-1] if history.epochs else {}
    common.write_train_report(out, options, device, seconds, history,
                              test_recon=final.get("test_recon"), test_kl=final.get("test_kl"))
    family.save_figures(model, sketches, out, options["dataset"], options["seed"])
    print(f"SketchRNN (K={options['latent_dim']}) on {options['dataset']}: "
          f"{len(history.epochs)} epochs, test reconstruction {final.get('test_recon', 0):.3f} "
          f"nats/sketch, KL {final.get('test_kl', 0):.3f} ({seconds:.1f} s); "
          f"checkpoint {out / 'last.pt'}")
    return 0


def _test_sketches(args: argparse.Namespace, options: dict[str, Any], device) -> family.Sketches:
    limit = args.test_limit if args.test_limit is not None else options.get("test_limit")
    return family.data({**options, "test_limit": limit}, device=device, train=False,
                       **common.where(args))


def evaluate(args: argparse.Namespace) -> int:
    device, report_path, options, model = common.open_checkpoint(args, FAMILY, optional_out=True,
                                                                 script_model=SketchRNN)
    sketches = _test_sketches(args, options, device)
    metrics = family.evaluate(model, sketches.test_x, sketches.test_lengths,
                              options["batch_size"], args.seed, scale=sketches.scale)
    print(f"test reconstruction {metrics['test_recon']:.3f} nats/sketch "
          f"(L_R {metrics['test_recon_per_step']:.4f} per step; paper's, pen states over "
          f"N_max: {metrics['test_paper_recon_per_step']:.4f}), KL {metrics['test_kl']:.3f} "
          f"({len(sketches.test_x)} test sketches); on dequantised offsets: reconstruction "
          f"{metrics['test_dq_recon']:.3f} nats/sketch (L_R "
          f"{metrics['test_dq_recon_per_step']:.4f})")
    common.write_report(report_path, args, {**metrics, "num_sketches": len(sketches.test_x)})
    return 0


def sample(args: argparse.Namespace) -> int:
    device, out, options, model = common.open_checkpoint(args, FAMILY, script_model=SketchRNN)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    model.eval()
    rows = [model.sample(args.num, temperature=tau, generator=generator)
            for tau in args.temperatures]
    sketch_figures.save_sketch_grid(out, rows, [f"prior, tau={tau}" for tau in args.temperatures],
                                    f"SketchRNN samples from the prior ({options['dataset']})")
    print(f"wrote {args.num} samples at each of {len(rows)} temperatures to {out}")
    return 0


def complete(args: argparse.Namespace) -> int:
    device, out, options, model = common.open_checkpoint(args, FAMILY, out_dir=True,
                                                         script_model=SketchRNN)
    model.eval()
    sketches = _test_sketches(args, options, device)
    n = min(args.sketches, len(sketches.test_x))
    summary = family.complete(
        model, sketches.test_x[:n], sketches.test_lengths[:n], out, options["dataset"],
        strokes=args.strokes, samples=args.samples, temperatures=args.temperatures,
        seed=args.seed)
    write_json(out / "completions.json", {
        "command": common.command_line(common.PROGRAM), "checkpoint": str(args.checkpoint),
        "completions": summary})
    for setting, stats in summary.items():
        print(f"{setting}: {stats['mean_drawn_rows']:.1f} rows drawn, "
              f"{stats['ended_fraction']:.2f} ended before N_max ({stats['n']} completions)")
    print(f"wrote completion_encode.png, completion_prior.png, completions.json to {out}")
    return 0


# ----------------------------------------------------------------- options
def _temperatures(parser: argparse.ArgumentParser, default: list[float]) -> None:
    parser.add_argument("--temperatures", type=common.positive_float, nargs="+", default=default,
                        help=f"sampling temperatures tau (default {' '.join(map(str, default))})")


def _test_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--test-limit", type=common.positive_int, default=None,
                        help="first N test sketches (default: as in training)")
    common.add_data_options(parser)


def add_parser(sub) -> list[argparse.ArgumentParser]:
    """``pyrovae sketch`` and its five subcommands; returns every parser (for -v/-q)."""
    d = family.DEFAULTS
    parser = sub.add_parser(
        FAMILY, help="train, resume, evaluate, sample or complete SketchRNN",
        description="SketchRNN (Ha & Eck 2018): a bidirectional-LSTM encoder and an LSTM "
        "decoder with a mixture of Gaussians over pen offsets, on sketch-rnn's drawings.")
    actions = parser.add_subparsers(dest="action", required=True)
    tr = actions.add_parser(
        "train", help="train SketchRNN into a run folder",
        description="Train SketchRNN with the paper's recipe (Adam with a per-step decay, "
        "value clipping on the mean loss, KL annealing and floor, length-bucketed batches); "
        "the run folder gets last.pt (resumable), options.json, train.json, metrics.csv, "
        "curve.png and figures of samples, reconstructions and an interpolation.")
    add, opt = tr.add_argument, functools.partial(common.add_defaulted, tr, d)
    opt("--dataset", None, "sketch-rnn data set", choices=sorted(SKETCH_DATASETS))
    opt("--latent-dim", common.positive_int, "K")
    opt("--encoder-size", common.positive_int, "encoder LSTM width, each direction")
    opt("--decoder-size", common.positive_int, "decoder LSTM width")
    opt("--num-mixtures", common.positive_int, "Gaussians of the offset mixture")
    opt("--max-length", common.positive_int, "N_max: longer sketches are dropped")
    add("--pen-loss", default=d["pen_loss"], choices=PEN_LOSSES,
        help="score pen states up to each sketch's end (sketch, default) or over all N_max "
        "steps (padded, the paper's)")
    opt("--w-kl", common.positive_float, "the paper's final KL weight w_KL")
    opt("--kl-eta-min", common.positive_float, "KL annealing's start fraction")
    opt("--kl-rate", common.positive_float, "KL annealing's rate per step")
    opt("--kl-min", float, "KL floor, nats per latent dimension")
    add("--train-limit", type=common.positive_int, default=None,
        help="first N training sketches (default all)")
    add("--test-limit", type=common.positive_int, default=None,
        help="first N test sketches (default all)")
    opt("--bucket-pool", common.non_negative_int, "batches per length-sorted pool",
        "; 0: random batches")
    opt("--lr-decay", common.positive_float, "learning-rate factor per step")
    opt("--min-lr", common.positive_float, "floor of the decayed rate")
    opt("--clip-value", float, "clip each gradient value of the mean loss", "; 0: none")
    opt("--random-scale", fraction,
        "scale each training sketch's dx and dy by factors uniform in [1-R, 1+R), fresh every "
        "epoch (the paper's augmentation)", "; 0: off")
    add("--dequantize", action=argparse.BooleanOptionalAction, default=d["dequantize"],
        help="add uniform noise of one pixel's width to the training offsets, fresh every "
        f"epoch (default {'on' if d['dequantize'] else 'off'})")
    add("--clip-norm", type=common.positive_float, default=None,
        help="clip the global norm of the summed-loss gradient (default: none)")
    common.add_train_basics(tr, out="runs/sketch", epochs=100)
    tr.set_defaults(run=train, memory_options=("--batch-size",))

    re = common.add_resume_parser(actions, FAMILY, _fit, ("--batch-size",))

    ev = common.add_checkpoint_parser(
        actions, "evaluate", evaluate, (), checkpoint=CHECKPOINT,
        help="test reconstruction loss and KL of a checkpoint",
        description="Mean test reconstruction loss (nats per sketch, and per step as the "
        "paper's L_R) and KL of a checkpoint, one z ~ q(z|x) per sketch.")
    ev.add_argument("--out", default=None, help="also write the metrics to this JSON file")
    _test_data_options(ev)

    sa = common.add_sample_parser(
        actions, sample, help="draw sketches from the prior into a PNG",
        description="Sketches decoded from z ~ N(0, I), one row per temperature.",
        out="samples.png", memory_options=("--num",), checkpoint=CHECKPOINT)
    sa.add_argument("--num", type=common.positive_int, default=8,
                    help="sketches per temperature (default 8)")
    _temperatures(sa, [0.1, 0.5, 1.0])

    co = common.add_checkpoint_parser(
        actions, "complete", complete, ("--samples",), checkpoint=CHECKPOINT,
        help="finish test sketches from their first strokes",
        description="Keep the first --strokes strokes of --sketches test sketches and let the "
        "decoder draw the rest, with z from the partial sketch and from the prior; writes "
        "completion_encode.png, completion_prior.png and completions.json into --out.")
    co.add_argument("--out", default="runs/sketch_complete",
                    help="folder for the figures (default runs/sketch_complete)")
    co.add_argument("--sketches", type=common.positive_int, default=4,
                    help="test sketches to complete (default 4)")
    co.add_argument("--strokes", type=common.positive_int, default=2,
                    help="strokes kept of each (default 2)")
    co.add_argument("--samples", type=common.positive_int, default=6,
                    help="completions per temperature (default 6)")
    _temperatures(co, [0.1, 0.3, 0.6])
    _test_data_options(co)
    return [parser, tr, re, ev, sa, co]
