"""Train the SMILES VAE on a subset of the MOSES training split, inside a wall-time budget.

An "epoch" here is one pass over a chunk of ``--epoch-size`` molecules of the subset; successive
epochs walk through the chunks in turn, so that the time budget, the checkpoints and the KL
annealing (which act at epoch ends) come every few minutes on a CPU while training still sees
every molecule of the subset once before any is repeated. Run it again with the same ``--out``
to resume from ``last.pt``.

    python -m experiments.smiles.train --train-size 100000 --minutes 40 --out runs/smiles/main

References:
    R. Gómez-Bombarelli et al. Automatic chemical design using a data-driven continuous
    representation of molecules. ACS Central Science 2018.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pyro
import torch

from pyrovae.data.smiles import SmilesVocabulary, load_smiles
from pyrovae.infer import KLAnnealing, TimeBudget, fit, read_checkpoint
from pyrovae.models.smiles_vae import SMILESVAE
from pyrovae.runs.launch import add_device_options, add_parallel_options, parallel_options
from pyrovae.runs.provenance import evaluates, provenance, write_json
from pyrovae.runs.script import start_device


class SmilesChunks:
    """Epoch ``e`` is chunk ``e mod C`` of the encoded subset (``for_epoch`` for ``fit``)."""

    def __init__(self, tokens: torch.Tensor, lengths: torch.Tensor, chunk: int) -> None:
        self.tokens, self.lengths = tokens, lengths
        self.chunk = min(chunk, tokens.shape[0])
        self.count = tokens.shape[0] // self.chunk

    def __len__(self) -> int:
        return self.chunk

    def for_epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = (epoch % self.count) * self.chunk
        rows = slice(start, start + self.chunk)
        return self.tokens[rows], self.lengths[rows]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=100_000,
                        help="molecules drawn from the MOSES train split (default 100000)")
    parser.add_argument("--epoch-size", type=int, default=10_000,
                        help="molecules per epoch, a chunk of the subset (default 10000)")
    parser.add_argument("--epochs", type=int, default=1000, help="most epochs (default 1000)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-time budget of this invocation (default: none)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clip-norm", type=float, default=50.0)
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--embedding", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256, help="decoder GRU width")
    parser.add_argument("--encoder-hidden", type=int, default=128,
                        help="width of each direction of the encoder GRU")
    parser.add_argument("--layers", type=int, default=1, help="decoder GRU layers")
    parser.add_argument("--kl-start", type=float, default=0.1,
                        help="KL weight of the first epoch (default 0.1)")
    parser.add_argument("--kl-epochs", type=int, default=5,
                        help="epochs over which the KL weight rises to 1 (default 5)")
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
    budget = TimeBudget(args.minutes)
    smiles = load_smiles("train", size=args.train_size, seed=args.seed, root=args.data_root)
    vocab = SmilesVocabulary.build(smiles)
    tokens, lengths = vocab.encode(smiles)
    last = args.out / "last.pt"
    if last.exists():
        saved = read_checkpoint(last)["model_config"]["tokens"]
        if saved != vocab.tokens:
            raise SystemExit(f"error: {last} was trained with another vocabulary; use a new --out")
    # fit seeds only its own loop: the initial weights are drawn here, so seed them too (runs
    # before this line started from unseeded weights and cannot be repeated exactly).
    pyro.set_rng_seed(args.seed)
    model = SMILESVAE(
        vocab.tokens, latent_dim=args.latent, embedding_dim=args.embedding,
        hidden_size=args.hidden, encoder_hidden_size=args.encoder_hidden,
        num_layers=args.layers, kl_weight=args.kl_start,
        word_dropout=args.word_dropout, kl_floor=args.kl_floor,
    )
    started = time.perf_counter()
    history = fit(
        model,
        SmilesChunks(tokens, lengths, args.epoch_size),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        clip_norm=args.clip_norm,
        device=device,
        seed=args.seed,
        callbacks=[KLAnnealing(args.kl_start, epochs=args.kl_epochs), budget],
        checkpoint_dir=args.out,
        checkpoint_every=args.checkpoint_every,
        resume=True,
        config=vars(args) | {"out": str(args.out)},
        **parallel_options(args),
    )
    seconds = time.perf_counter() - started
    if not evaluates():
        return
    summary_path = args.out / "train.json"
    runs = []
    if summary_path.exists():
        from pyrovae.runs.provenance import read_json

        runs = read_json(summary_path).get("invocations", [])
    runs.append({**provenance(device), "seconds": seconds})
    write_json(summary_path, {
        "invocations": runs,
        "train_size": args.train_size,
        "vocabulary": vocab.tokens,
        "max_tokens": int(lengths.max()) - 1,
        "history": history.epochs,
        "checkpoint": history.last_checkpoint,
    })
    final = history.epochs[-1] if history.epochs else {}
    print(f"epochs {len(history.epochs)}, loss/example {final.get('loss_per_example')}, "
          f"{seconds:.0f} s; wrote {summary_path}")


if __name__ == "__main__":
    main()
