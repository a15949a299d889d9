"""``pyrovae smiles {train,resume,evaluate,sample,optimize}``: the SMILES VAE
(Gómez-Bombarelli et al. 2018) on molecules of the MOSES benchmark, and (``train --model
charrnn``) its baseline, the same decoder with no latent code.

``train`` fits it (`pyrovae.runs.smiles`: a chunked, length-bucketed stream, a KL schedule with
a cap, the collapse monitor on held-out molecules) into a run folder (``last.pt``,
``options.json``, ``train.json``, the curve and ``metrics.csv``); ``resume`` continues it;
``evaluate`` reports a checkpoint's test ELBO, KL, active units and, with RDKit, reconstruction
accuracy and MOSES-style sample metrics (a CharRNN: its exact test NLL and the sample
metrics); ``sample`` writes molecules decoded from the prior; ``optimize`` climbs a property
predictor in the latent space (RDKit; the VAE only). ``--cpu-minutes`` stops training once it
has used that much CPU time, so that a CharRNN can be given a VAE run's ``cpu_seconds``.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from pyrovae.cli import _common as common
from pyrovae.data.smiles import load_smiles
from pyrovae.infer import load_checkpoint
from pyrovae.infer.checkpoint import read_checkpoint
from pyrovae.runs import folder
from pyrovae.runs import smiles as family
from pyrovae.runs.provenance import write_json

FAMILY = "smiles"
KEYS = ("train_limit", "epoch_size", "epochs", "batch_size", "lr", "clip_norm", "latent_dim",
        "embedding_dim", "decoder_size", "encoder_size", "layers", "kl_start", "kl_epochs",
        "kl_cap", "kl_cap_per_token", "bucket_pool", "monitor_size", "word_dropout", "kl_floor",
        "checkpoint_every", "seed", "model", "cpu_minutes")


def _rdkit() -> bool:
    try:
        import rdkit  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------- subcommands
def train(args: argparse.Namespace) -> int:
    # a charrnn run refuses the VAE's options before its folder exists, and stores none of them
    vae = family.check_options(vars(args)) == "vae"
    keys = KEYS if vae else tuple(k for k in KEYS if k not in family.VAE_ONLY)
    out, options = common.start_training(args, FAMILY, keys)
    with folder.releasing(out):
        return _fit(args, out, options, resume=False)


def _fit(args: argparse.Namespace, out: Path, options: dict[str, Any], resume: bool) -> int:
    if resume and args.cpu_minutes is not None:
        options["cpu_minutes"] = args.cpu_minutes  # matching another run's CPU time needs more
    device = common.resolve_device(args.device)
    where = common.where(args)
    molecules = family.data(options, **where)
    model = family.build(options, molecules)
    write_json(out / folder.OPTIONS_FILE, options)
    history, seconds = family.train(model, molecules, options, device=device, out=out,
                                    resume=resume, config=options,
                                    progress=common.progress_enabled(args), **where)
    final = history.epochs[-1] if history.epochs else {}
    vae = family.check_options(options) == "vae"
    common.write_train_report(out, options, device, seconds, history,
                              vocabulary=molecules.vocab.tokens,
                              **({"kl_cap_per_molecule": family.kl_cap(options, molecules)}
                                 if vae else {}))
    watch = (f", held-out KL {final['kl_per_example']:.2f} nats, {final['active_units']} "
             f"active units" if "active_units" in final else "")
    if "held_out_nll_per_molecule" in final:
        watch = f", held-out NLL {final['held_out_nll_per_molecule']:.3f} nats/molecule"
    name = f"SMILES VAE (K={options['latent_dim']})" if vae else "CharRNN"
    print(f"{name} on {len(molecules.smiles)} MOSES molecules: {len(history.epochs)} epochs, "
          f"loss {final.get('loss_per_example', 0):.3f} nats/molecule{watch} ({seconds:.1f} s, "
          f"{final.get('cpu_seconds', 0):.1f} CPU-s in all); checkpoint {out / 'last.pt'}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    device, report_path, _, model = common.open_checkpoint(args, FAMILY, optional_out=True)
    model.eval()
    where = common.where(args)
    pool = load_smiles("test", size=args.test_limit, seed=args.seed, **where)
    targets = family.covered_molecules(model, pool)
    metrics = family.test_metrics(model, targets, args.batch_size)
    if "test_nll_per_molecule" in metrics:
        print(f"test NLL {metrics['test_nll_per_molecule']:.3f} nats/molecule (exact), "
              f"{metrics['test_nll_per_token']:.4f} nats/token ({len(targets)} test molecules)")
    else:
        print(f"test ELBO {metrics['test_elbo_per_molecule_one_sample']:.3f} nats/molecule "
              f"(one sample), KL {metrics['test_kl_per_molecule']:.3f}, "
              f"{metrics['active_units']} of {metrics['latent_dim']} active units "
              f"({len(targets)} test molecules)")
    if "reconstruction_accuracy" in metrics:
        print(f"greedy reconstruction accuracy {metrics['reconstruction_accuracy']:.3f}")
    if args.samples and _rdkit():
        samples = family.sample_molecules(model, args.samples, args.temperature,
                                          args.batch_size, args.seed)
        # novelty against every MOSES training molecule, not the run's subset: the reference
        # of experiments.smiles.evaluate and of the MOSES benchmark, so the numbers compare
        train = load_smiles("train", **where)
        metrics |= family.sample_metrics(samples, train)
        metrics["novelty_reference_size"] = len(train)
        print(f"{args.samples} samples: validity {metrics['validity']:.3f}, "
              f"unique@10k {metrics['unique@10k']}, novelty {metrics['novelty']} "
              f"(against all {len(train)} MOSES training molecules)")
    elif args.samples:
        print("sample metrics need RDKit (pip install rdkit): skipped")
    common.write_report(report_path, args, metrics)
    return 0


def sample(args: argparse.Namespace) -> int:
    _, out, _, model = common.open_checkpoint(args, FAMILY)
    model.eval()
    samples = family.sample_molecules(model, args.num, args.temperature, args.batch_size,
                                      args.seed)
    out.write_text("\n".join(samples) + "\n")
    for smiles in samples[:5]:
        print(smiles)
    source = "z ~ N(0, I)" if model.latent_dim else "no latent code"
    print(f"wrote {len(samples)} molecules ({source}, temperature {args.temperature}) "
          f"to {out}")
    return 0


def optimize(args: argparse.Namespace) -> int:
    device = common.resolve_device(args.device)
    options = common.training_options(read_checkpoint(args.checkpoint), args.checkpoint, FAMILY)
    if family.check_options(options) != "vae":  # before --out is made
        raise common.UsageError(f"--checkpoint {args.checkpoint} holds a {options['model']} "
                                "model, which has no latent space to optimise in")
    out = folder.check_writable_dir(args.out)
    if not _rdkit():
        raise common.UsageError("smiles optimize scores molecules with RDKit: pip install rdkit")
    model = load_checkpoint(args.checkpoint, map_location=device).eval()
    pool = family.data(options, **common.where(args)).smiles
    found = family.latent_search(
        model, pool, args.property, subset=args.subset, starts=args.starts, steps=args.steps,
        record_every=args.record_every, lr=args.lr, prior_weight=args.prior_weight,
        predictor_epochs=args.predictor_epochs, seed=args.seed)
    top = found.pop("top")
    write_json(out / "metrics.json", {
        "command": common.command_line(common.PROGRAM), "checkpoint": str(args.checkpoint),
        "property": args.property, **found})
    if top:
        family.save_molecule_grid(out / "top_found.png", [s for s, _ in top],
                                  [f"{args.property} {v:.3f}" for _, v in top])
    search = found["latent_search"]
    print(f"{args.property}: training subset best {found['training_subset']['best']:.4f}, "
          f"latent search best {search['best']}, random prior best "
          f"{found['random_prior_same_decodes']['best']} ({search['decodes']} decodes each)")
    print(f"wrote metrics.json{', top_found.png' if top else ''} to {out}")
    return 0


# ----------------------------------------------------------------- options
def _sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--temperature", type=common.positive_float, default=1.0,
                        help="decoding temperature (default 1.0)")
    parser.add_argument("--batch-size", type=common.positive_int, default=1000,
                        help="molecules decoded at once (default 1000)")


def add_parser(sub) -> list[argparse.ArgumentParser]:
    """``pyrovae smiles`` and its five subcommands; returns every parser (for -v/-q)."""
    d = family.DEFAULTS
    parser = sub.add_parser(
        FAMILY, help="train, resume, evaluate, sample or optimize the SMILES VAE",
        description="The SMILES VAE (Gómez-Bombarelli et al. 2018): a bidirectional-GRU "
        "encoder and a GRU decoder over SMILES tokens, on MOSES molecules; and its baseline, "
        "the same decoder with no latent code (train --model charrnn).")
    actions = parser.add_subparsers(dest="action", required=True)
    tr = actions.add_parser(
        "train", help="train the SMILES VAE into a run folder",
        description="Train the SMILES VAE on --train-limit molecules drawn from MOSES's "
        "training split (an epoch is a chunk of --epoch-size of them); the run folder gets "
        "last.pt (resumable), options.json, train.json, metrics.csv and curve.png. "
        "--model charrnn trains the same decoder with no latent code instead (the options "
        "marked VAE do not apply to it).")
    add, opt = tr.add_argument, functools.partial(common.add_defaulted, tr, d)
    add("--model", choices=sorted(family.MODELS), default=d["model"],
        help="vae (default): the SMILES VAE; charrnn: its decoder alone, a language model")
    add("--cpu-minutes", type=common.positive_float, default=None,
        help="stop after the epoch in which training has used this much CPU time, resumed "
        "invocations included (every epoch records cpu_seconds; default: no budget)")
    opt("--train-limit", common.positive_int,
        "molecules drawn (with --seed) from MOSES's training split")
    opt("--epoch-size", common.positive_int, "molecules per epoch, a chunk of them")
    opt("--latent-dim", common.positive_int, "K (VAE)")
    opt("--embedding-dim", common.positive_int, "token embedding width")
    opt("--encoder-size", common.positive_int, "encoder GRU width, each direction (VAE)")
    opt("--decoder-size", common.positive_int, "decoder GRU width")
    opt("--layers", common.positive_int, "decoder GRU layers")
    opt("--clip-norm", common.positive_float, "clip the gradient's global norm")
    opt("--kl-start", float, "KL weight of the first epoch (VAE)")
    opt("--kl-epochs", common.positive_int,
        "epochs over which the KL weight rises to its cap (VAE)")
    opt("--kl-cap", common.positive_float, "the KL weight's final value, per molecule (VAE)",
        ": the ELBO")
    add("--kl-cap-per-token", type=common.positive_float, default=None,
        help="the cap on MOSES's token-mean scale (VAE; overrides --kl-cap; default: none)")
    opt("--kl-floor", float,
        "free bits (VAE): nats per molecule below which the KL is not pushed down", ": none")
    opt("--word-dropout", float, "probability of dropping each decoder input (VAE)")
    opt("--bucket-pool", common.non_negative_int, "batches per length-sorted pool",
        "; 0: random batches")
    opt("--monitor-size", common.non_negative_int,
        "held-out molecules for the per-epoch KL and active units (charrnn: NLL)", "; 0: none")
    opt("--checkpoint-every", common.positive_int, "steps between checkpoints")
    common.add_train_basics(tr, out="runs/smiles", epochs=None)
    add("--epochs", type=common.positive_int, default=100, help="training epochs (default 100)")
    opt("--batch-size", common.positive_int, "molecules per step and process")
    add("--lr", type=common.positive_float, default=d["lr"], help=f"Adam step ({d['lr']})")
    tr.set_defaults(run=train, memory_options=("--batch-size",))

    re = common.add_resume_parser(actions, FAMILY, _fit, ("--batch-size",))
    re.add_argument("--cpu-minutes", type=common.positive_float, default=None,
                    help="new CPU-time budget of the whole run, as --epochs raises its total "
                    "(default: the run's)")
    checkpoint = functools.partial(common.add_checkpoint_parser, actions,
                                   memory_options=("--batch-size",),
                                   checkpoint="runs/smiles/last.pt")

    ev = checkpoint(
        "evaluate", evaluate, help="test ELBO, KL, active units, sample metrics",
        description="The one-sample test ELBO, KL and active units of a checkpoint on MOSES "
        "test molecules; with RDKit, the greedy reconstruction accuracy and the validity, "
        "uniqueness and novelty (against all MOSES training molecules) of --samples "
        "molecules from the prior.")
    ev.add_argument("--test-limit", type=common.positive_int, default=1000,
                    help="test molecules drawn (default 1000)")
    ev.add_argument("--samples", type=common.non_negative_int, default=1000,
                    help="molecules sampled for the sample metrics (default 1000; 0: none)")
    ev.add_argument("--out", default=None, help="also write the metrics to this JSON file")
    _sampling(ev)
    common.add_data_options(ev)

    sa = checkpoint(
        "sample", sample, help="decode molecules from the prior into a text file",
        description="SMILES strings decoded from z ~ N(0, I), one per line.")
    sa.add_argument("--num", type=common.positive_int, default=100,
                    help="molecules (default 100)")
    sa.add_argument("--out", default="samples.smi",
                    help="text file, one SMILES a line (default samples.smi)")
    _sampling(sa)

    op = checkpoint(
        "optimize", optimize, help="optimise a property in the latent space (RDKit)",
        description="Encode --subset of the run's training molecules, fit a property "
        "predictor on their codes, climb it from the --starts best codes, decode on the way; "
        "against as many decodes of prior draws. Writes metrics.json and top_found.png.")
    op.add_argument("--property", choices=["qed", "penalized_logp"], default="qed",
                    help="RDKit's score to raise (default qed)")
    op.add_argument("--subset", type=common.positive_int, default=2000,
                    help="training molecules encoded and scored (default 2000)")
    op.add_argument("--starts", type=common.positive_int, default=20,
                    help="ascent paths, from the best codes (default 20)")
    op.add_argument("--steps", type=common.positive_int, default=100,
                    help="ascent steps per path (default 100)")
    op.add_argument("--record-every", type=common.positive_int, default=10,
                    help="steps between decodes (default 10)")
    op.add_argument("--lr", type=common.positive_float, default=0.05,
                    help="Adam's step in z (default 0.05)")
    op.add_argument("--prior-weight", type=float, default=0.1,
                    help="pull towards the prior: maximise f(z) - w |z|^2 / 2 (default 0.1)")
    op.add_argument("--predictor-epochs", type=common.positive_int, default=300,
                    help="epochs of the property predictor (default 300)")
    op.add_argument("--out", default="runs/smiles_optimize",
                    help="folder for metrics.json and top_found.png (default "
                    "runs/smiles_optimize)")
    common.add_data_options(op)
    return [parser, tr, re, ev, sa, op]
