"""Train the SMILES VAE on a subset of the MOSES training split, inside a wall-time budget.

An "epoch" here is one pass over a chunk of ``--epoch-size`` molecules of the subset; successive
epochs walk through the chunks in turn, so that the time budget, the checkpoints and the KL
annealing (which act at epoch ends) come every few minutes on a CPU while training still sees
every molecule of the subset once before any is repeated. Run it again with the same ``--out``
to resume from ``last.pt``. Within an epoch, batches hold molecules of similar length
(``pyrovae.data.buckets``), each cut to its longest molecule.

Against posterior collapse (the code ignored by the decoder), three options:

- a KL schedule with a cap: the KL weight rises linearly from ``--kl-start`` to ``--kl-cap``
  over ``--kl-epochs`` epochs and stays there. **Scale**: our loss is per molecule, the token
  log-likelihoods *summed* over the molecule plus ``kl_weight`` times its KL in nats (weight 1:
  the negative ELBO). MOSES's CharVAE averages the token cross-entropy over tokens and adds
  ``w`` times the KL per molecule, so its ``w`` is ``w * L`` here, with L the mean number of
  predicted tokens per molecule (``--kl-cap-per-token w`` converts with the subset's L: MOSES's
  final 0.05 is 0.05 * 36.4 = 1.82 on our scale for 100 000 molecules drawn with seed 0, more
  than the ELBO's 1);
- free bits (``--free-bits``, nats per molecule, see ``pyrovae.models.free_bits``);
- word dropout (``--word-dropout``).

After every epoch the guide's KL per molecule and its active units on ``--monitor-size``
held-out molecules (MOSES test split) go into the history, and a warning is logged when the
code has collapsed (``pyrovae.infer.collapse.CollapseMonitor``: fewer than 2 active units or
less than 1 nat per molecule).

    python -m experiments.smiles.train --train-limit 100000 --minutes 40 --out runs/smiles/main

References:
    R. Gómez-Bombarelli et al. Automatic chemical design using a data-driven continuous
    representation of molecules. ACS Central Science 2018.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pyrovae.infer import read_checkpoint
from pyrovae.runs import smiles as family
from pyrovae.runs.curves import write_curves
from pyrovae.runs.launch import add_device_options, add_parallel_options
from pyrovae.runs.provenance import evaluates, provenance, write_json
from pyrovae.runs.script import run_script, start_device

logger = logging.getLogger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-limit", type=int, default=100_000,
                        help="molecules drawn from the MOSES train split (default 100000)")
    parser.add_argument("--epoch-size", type=int, default=10_000,
                        help="molecules per epoch, a chunk of the subset (default 10000)")
    parser.add_argument("--epochs", type=int, default=1000, help="most epochs (default 1000)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-time budget of this invocation (default: none)")
    parser.add_argument("--cpu-minutes", type=float, default=None,
                        help="CPU-time budget of the whole run, resumed invocations included "
                             "(every epoch records cpu_seconds; default: none)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clip-norm", type=float, default=50.0)
    parser.add_argument("--latent-dim", type=int, default=64, help="K (default 64)")
    parser.add_argument("--embedding-dim", type=int, default=32,
                        help="token embedding width (default 32)")
    parser.add_argument("--decoder-size", type=int, default=256,
                        help="decoder GRU width (default 256)")
    parser.add_argument("--encoder-size", type=int, default=128,
                        help="width of each direction of the encoder GRU")
    parser.add_argument("--layers", type=int, default=1, help="decoder GRU layers")
    parser.add_argument("--kl-start", type=float, default=0.1,
                        help="KL weight of the first epoch (default 0.1)")
    parser.add_argument("--kl-epochs", type=int, default=5,
                        help="epochs over which the KL weight rises to its cap (default 5)")
    parser.add_argument("--kl-cap", type=float, default=1.0,
                        help="the KL weight's final value on our per-molecule loss (default 1: "
                             "the ELBO); see the module docstring for MOSES's scale")
    parser.add_argument("--kl-cap-per-token", type=float, default=None,
                        help="the cap on MOSES's token-mean scale, converted with the subset's "
                             "mean tokens per molecule (overrides --kl-cap)")
    parser.add_argument("--bucket-pool", type=int, default=50,
                        help="batches per length-sorted pool (default 50; 0: random batches)")
    parser.add_argument("--monitor-size", type=int, default=1000,
                        help="held-out test molecules for the per-epoch KL and active units "
                             "(default 1000; 0: none)")
    parser.add_argument("--word-dropout", type=float, default=0.0,
                        help="probability of replacing each decoder input by <pad> while "
                             "training (Bowman et al. 2016; default 0: none)")
    parser.add_argument("--kl-floor", "--free-bits", dest="kl_floor", type=float, default=0.0,
                        help="free bits: nats per molecule below which the KL is not pushed "
                             "down, as SketchRNN's --kl-floor (default 0: none)")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="default: $PYROVAE_DATA")
    parser.add_argument("--out", type=Path, default=Path("runs/smiles/train"))
    add_device_options(parser)
    add_parallel_options(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = start_device(args)
    options = vars(args)
    molecules = family.data(options, root=args.data_root)
    last = args.out / "last.pt"
    if last.exists():
        saved = read_checkpoint(last)["model_config"]["tokens"]
        if saved != molecules.vocab.tokens:
            raise SystemExit(f"error: {last} was trained with another vocabulary; use a new --out")
    if args.kl_cap_per_token is not None:
        logger.info("KL cap %g per token-mean = %.4f per molecule (%.2f tokens per molecule)",
                    args.kl_cap_per_token, family.kl_cap(options, molecules),
                    molecules.mean_tokens)
    model = family.build(options, molecules)
    cpu_started = time.process_time()
    history, seconds = family.train(
        model, molecules, options, device=device, out=args.out, resume=True,
        minutes=args.minutes, root=args.data_root,
        # data_root is where the data lie, not what the run is: a resumed run may move them
        config={k: v for k, v in options.items() if k != "data_root"} | {"out": str(args.out)},
    )
    if not evaluates():
        return
    summary_path = args.out / "train.json"
    runs = []
    if summary_path.exists():
        from pyrovae.runs.provenance import read_json

        runs = read_json(summary_path).get("invocations", [])
    runs.append({**provenance(device), "seconds": seconds,
                 "cpu_seconds": time.process_time() - cpu_started})
    write_json(summary_path, {
        "invocations": runs,
        "train_limit": args.train_limit,
        "vocabulary": molecules.vocab.tokens,
        "max_tokens": int(molecules.lengths.max()) - 1,
        "mean_predicted_tokens": molecules.mean_tokens,
        "kl_cap_per_molecule": family.kl_cap(options, molecules),
        "history": history.epochs,
        "checkpoint": history.last_checkpoint,
    })
    write_curves(args.out, history.epochs, f"SMILES VAE on {args.train_limit} MOSES molecules")
    final = history.epochs[-1] if history.epochs else {}
    print(f"epochs {len(history.epochs)}, loss/example {final.get('loss_per_example')}, "
          f"{seconds:.0f} s; wrote {summary_path}")


if __name__ == "__main__":
    run_script(main)
