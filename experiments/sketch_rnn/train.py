"""Train SketchRNN on a sketch-rnn data set; write the test curve and stroke figures.

Trains :class:`pyrovae.models.SketchRNN` with :func:`pyrovae.fit` and the training defaults of
the paper's code (sketch-rnn's hyper-parameters): Adam at lr 1e-3
decaying by 0.9999 per step to 1e-5, every gradient value clipped at 1.0 on the *mean* loss
(the loss averaged over the batch and divided by N_max; ``fit``'s loss is summed over the data
set, so :class:`pyrovae.infer.clipping.MeanLossAdam` divides by N * N_max before clipping),
w_KL = 0.5 annealed as ``w_KL (1 - 0.99 * 0.99995^step)``, KL floor 0.2 per latent dimension.
Batches hold sketches of similar length (:class:`pyrovae.data.buckets.LengthBuckets`), each cut
to its longest sketch. After every epoch it evaluates the test set: the reconstruction loss in
the project's definition (pen states scored up to each sketch's end row) and the paper's
(pen states over all N_max steps), both per N_max as the paper's L_R, the KL, and the process's
CPU-seconds so far. A model trained with the default ``--pen-loss sketch`` never sees the steps
after a sketch's end, so its paper L_R is dominated by them: compare it with the paper only
for ``--pen-loss padded`` (which forgoes most of the bucketing's saving, as every batch is
then decoded over N_max steps). Then it draws, as vector strokes: samples from the prior,
reconstructions of test sketches at several temperatures, and a latent interpolation between
two test sketches.
Re-running the same command resumes from ``OUT/checkpoints/last.pt`` (``--minutes`` bounds
each invocation's wall time).

Not done here: the paper's data augmentation (random scaling, stroke dropping), recurrent
dropout and HyperLSTM decoder.

References:
    D. Ha and D. Eck. A neural representation of sketch drawings. ICLR 2018.

Example::

    python -m experiments.sketch_rnn.train --dataset aaron_sheep --minutes 40
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from pathlib import Path

import torch

from experiments.sketch_rnn.plots import save_interpolation, save_sketch_grid
from pyrovae.data.buckets import LengthBuckets, bucketed_batches
from pyrovae.data.sketches import SKETCH_DATASETS, load_sketches
from pyrovae.infer import KLAnnealing, TimeBudget, fit
from pyrovae.infer.clipping import MeanLossAdam
from pyrovae.models.sketch_rnn import PEN_LOSSES, SketchRNN
from pyrovae.runs.launch import add_device_options, add_parallel_options, parallel_options
from pyrovae.runs.provenance import evaluates, is_main, provenance, write_json
from pyrovae.runs.script import start_device

TEMPERATURES = (0.1, 0.5, 1.0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="aaron_sheep", choices=sorted(SKETCH_DATASETS))
    p.add_argument("--out", default=None, help="output folder (default runs/sketch_rnn/DATASET)")
    add_device_options(p)
    add_parallel_options(p)
    p.add_argument("--epochs", type=int, default=100, help="total epochs (default 100)")
    p.add_argument("--minutes", type=float, default=None, help="wall-time budget of this run")
    p.add_argument("--cpu-minutes", type=float, default=None,
                   help="CPU-time budget of the whole run, all invocations (default: none)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--bucket-pool", type=int, default=50,
                   help="batches per length-sorted pool (default 50; 0: random batches)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-decay", type=float, default=0.9999,
                   help="learning-rate factor per step (default 0.9999, the paper's)")
    p.add_argument("--min-lr", type=float, default=1e-5, help="floor of the decayed rate")
    p.add_argument("--clip-value", type=float, default=1.0,
                   help="clip each gradient value of the mean loss (default 1.0; 0: none)")
    p.add_argument("--clip-norm", type=float, default=None,
                   help="clip the global norm of fit's summed-loss gradient (default: none)")
    p.add_argument("--latent-dim", type=int, default=128)
    p.add_argument("--encoder-size", type=int, default=256)
    p.add_argument("--decoder-size", type=int, default=512)
    p.add_argument("--num-mixtures", type=int, default=20)
    p.add_argument("--max-length", type=int, default=250, help="N_max: longer sketches dropped")
    p.add_argument("--pen-loss", default="sketch", choices=PEN_LOSSES)
    p.add_argument("--w-kl", type=float, default=0.5,
                   help="the paper's final KL weight w_KL on its per-dimension KL (default 0.5)")
    p.add_argument("--kl-eta-min", type=float, default=0.01, help="annealing start fraction")
    p.add_argument("--kl-rate", type=float, default=0.99995, help="annealing rate per step")
    p.add_argument("--kl-min", type=float, default=0.2,
                   help="the paper's KL floor per latent dimension (default 0.2)")
    p.add_argument("--train-limit", type=int, default=None, help="first N training sketches")
    p.add_argument("--test-limit", type=int, default=None, help="first N test sketches")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


@contextlib.contextmanager
def scoring_pen_states(model: SketchRNN, pen_loss: str):
    """``model`` with its pen states scored as ``pen_loss`` says, for the block's duration."""
    kept = model.pen_loss
    model.pen_loss = pen_loss
    try:
        yield model
    finally:
        model.pen_loss = kept


def evaluate(model: SketchRNN, x, lengths, batch_size: int, seed: int = 0) -> dict[str, float]:
    """Mean per-sketch test reconstruction loss and KL (one ``z ~ q`` per sketch, fixed seed).

    ``recon`` = -(log p(offsets | z) + log p(pen | z)) in nats per sketch with the pen states
    scored up to each sketch's end row (``pen_loss="sketch"``); ``recon_per_step`` divides it
    by N_max (the project's L_R). ``paper_recon_per_step`` scores the pen states over all N_max
    steps (``pen_loss="padded"``, the paper's L_R, which also counts predicting "ended" over
    the padding), with the same ``z``. The KL is also given per latent dimension (L_KL).
    Sketches are evaluated in order of length, so that each batch is cut short.
    """
    was_training = model.training
    model.eval()
    totals = {"offsets": 0.0, "pen": 0.0, "kl": 0.0, "paper_pen": 0.0}
    order = torch.argsort(lengths)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        for start in range(0, len(x), batch_size):
            rows = order[start:start + batch_size]
            for pen_loss, key in (("sketch", ""), ("padded", "paper_")):
                torch.manual_seed(seed + start)  # the same z for both pen losses
                with scoring_pen_states(model, pen_loss):
                    terms = model.loss_terms(x[rows], lengths[rows])
                totals[key + "pen"] += float(terms["pen"].sum())
                if not key:
                    for name in ("offsets", "kl"):
                        totals[name] += float(terms[name].sum())
    model.train(was_training)
    n = len(x)
    recon = -(totals["offsets"] + totals["pen"]) / n
    paper = -(totals["offsets"] + totals["paper_pen"]) / n
    return {
        "test_recon": recon,
        "test_offsets_nll": -totals["offsets"] / n,
        "test_pen_nll": -totals["pen"] / n,
        "test_kl": totals["kl"] / n,
        "test_recon_per_step": recon / model.max_length,
        "test_paper_recon_per_step": paper / model.max_length,
        "test_kl_per_dim": totals["kl"] / n / model.latent_dim,
    }


class StepDecay:
    """``fit``'s ``lr_schedule``: the factor ``max(floor, decay ** (epoch * steps_per_epoch))``
    for a whole epoch (the paper decays per step; an epoch here is ~74 steps)."""

    def __init__(self, decay: float, steps_per_epoch: int, floor: float) -> None:
        self.decay, self.steps_per_epoch, self.floor = decay, steps_per_epoch, floor

    def __call__(self, epoch: int) -> float:
        return max(self.floor, self.decay ** (epoch * self.steps_per_epoch))

    def __repr__(self) -> str:  # the name a resumed run compares
        return f"StepDecay({self.decay!r}, {self.steps_per_epoch!r}, {self.floor!r})"


class CpuClock:
    """A callback adding the CPU-seconds of every invocation so far (this process's, all
    threads) to each epoch's row, continuing a resumed run's count; it stops the run once they
    reach ``limit`` seconds (default: never)."""

    def __init__(self, limit: float | None = None) -> None:
        self.mark, self.limit = time.process_time(), limit

    def __call__(self, info) -> dict[str, float]:
        before = info.history.epochs[-1].get("cpu_seconds", 0.0) if info.history.epochs else 0.0
        now = time.process_time()
        total, self.mark = before + now - self.mark, now
        row = {"cpu_seconds": total}
        if self.limit is not None and total >= self.limit:
            row["stop"] = True
        return row


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = start_device(args)
    out = Path(args.out or f"runs/sketch_rnn/{args.dataset}")
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    load = dict(max_length=args.max_length, num_steps=args.max_length + 1, device=device)
    train = load_sketches(args.dataset, "train", **load)
    test = load_sketches(args.dataset, "test", **load)
    train_x, train_lengths = train.x[: args.train_limit], train.lengths[: args.train_limit]
    test_x, test_lengths = test.x[: args.test_limit], test.lengths[: args.test_limit]
    # The paper's loss per sketch is ours / N_max when kl_weight = w_KL * N_max / K and the
    # floor is KL_min * K nats (see SketchRNN's docstring).
    kl_weight = args.w_kl * args.max_length / args.latent_dim
    model = SketchRNN(
        latent_dim=args.latent_dim,
        encoder_size=args.encoder_size,
        decoder_size=args.decoder_size,
        num_mixtures=args.num_mixtures,
        max_length=args.max_length,
        pen_loss=args.pen_loss,
        kl_weight=kl_weight * args.kl_eta_min,
        kl_floor=args.kl_min * args.latent_dim,
    ).to(device)
    if args.bucket_pool > 0:
        data = LengthBuckets((train_x, train_lengths), train_lengths, args.batch_size,
                             pool=args.bucket_pool)
        steps_per_epoch = len(bucketed_batches(train_lengths, args.batch_size, 0, 0,
                                               args.bucket_pool))
    else:
        data = (train_x, train_lengths)
        steps_per_epoch = -(-len(train_x) // args.batch_size)
    # fit's loss is the data set's total; the paper's is the mean per sketch over N_max steps
    loss_scale = len(train_x) * args.max_length
    optimizer = MeanLossAdam.factory(loss_scale, args.clip_value or None)
    schedule = StepDecay(args.lr_decay, steps_per_epoch, args.min_lr / args.lr)

    def test_curve(info):
        return evaluate(info.module, test_x, test_lengths, args.batch_size, args.seed)

    started = time.perf_counter()
    cpu_started = time.process_time()
    history = fit(
        model,
        data,
        objective="elbo",
        optimizer=optimizer,
        lr=args.lr,
        lr_schedule=schedule,
        clip_norm=args.clip_norm,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=device,
        seed=args.seed,
        callbacks=[
            KLAnnealing(args.kl_eta_min, rate=args.kl_rate, weight=kl_weight),
            test_curve,
            CpuClock(None if args.cpu_minutes is None else 60 * args.cpu_minutes),
            TimeBudget(args.minutes),
        ],
        checkpoint_dir=out / "checkpoints",
        resume=True,
        config={"args": vars(args)},
        **parallel_options(args),
    )
    wall = time.perf_counter() - started
    if not evaluates():
        return
    final = history.epochs[-1] if history.epochs else {}
    write_json(
        out / "metrics.json",
        {
            "provenance": provenance(device),
            "args": vars(args),
            "model": model.config,
            "data": {"train": len(train_x), "test": len(test_x), "offset_scale": train.scale},
            "epochs_done": len(history.epochs),
            "wall_seconds_this_run": wall,
            "cpu_seconds_this_run": time.process_time() - cpu_started,
            "kl_weight_final": kl_weight,
            "loss_scale": loss_scale,
            "final": final,
            "history": history.epochs,
        },
    )

    model.eval()
    gen = torch.Generator(device=device).manual_seed(args.seed)
    n = min(8, len(test_x))
    rows, titles = [], []
    for tau in TEMPERATURES:
        rows.append(model.sample(8, temperature=tau, generator=gen))
        titles.append(f"prior, tau={tau}")
    save_sketch_grid(out / "samples.png", rows, titles, f"{args.dataset}: samples from the prior")
    rows, titles = [(test_x[:n], test_lengths[:n])], ["test sketch"]
    for tau in TEMPERATURES:
        rows.append(model.reconstruct(test_x[:n], test_lengths[:n], tau, generator=gen))
        titles.append(f"reconstruction, tau={tau}")
    save_sketch_grid(out / "reconstructions.png", rows, titles,
                     f"{args.dataset}: test sketches and reconstructions")
    if len(test_x) >= 2:
        loc = model.encode(test_x[:2], test_lengths[:2])[0]
        weights = torch.linspace(0, 1, 8, device=device, dtype=loc.dtype).unsqueeze(-1)
        z = (1 - weights) * loc[0] + weights * loc[1]
        decoded = model.generate(z, temperature=0.1, generator=gen)
        save_interpolation(out / "interpolation.png", (test_x[:2], test_lengths[:2]), decoded,
                           f"{args.dataset}: decoding z on the line between two test sketches")
    print(f"{len(history.epochs)} epochs, {wall:.0f} s; final {final}; wrote {out}")


if __name__ == "__main__":
    main()
