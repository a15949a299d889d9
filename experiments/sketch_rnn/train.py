"""Train SketchRNN on a sketch-rnn data set; write the test curve and stroke figures.

Trains :class:`pyrovae.models.SketchRNN` with :func:`pyrovae.fit` (Trace_ELBO, Adam, gradient
clipping, the paper's KL annealing and free bits), evaluates the test set's reconstruction loss
and KL after every epoch, and draws, as vector strokes: samples from the prior, reconstructions
of test sketches at several temperatures, and a latent interpolation between two test sketches.
Re-running the same command resumes from ``OUT/checkpoints/last.pt`` (``--minutes`` bounds each
invocation's wall time).

References:
    D. Ha and D. Eck. A neural representation of sketch drawings. ICLR 2018.

Example::

    python -m experiments.sketch_rnn.train --dataset aaron_sheep --minutes 40
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from experiments.sketch_rnn.plots import save_interpolation, save_sketch_grid
from pyrovae.data.sketches import SKETCH_DATASETS, load_sketches
from pyrovae.infer import KLAnnealing, TimeBudget, fit
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
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--latent-dim", type=int, default=128)
    p.add_argument("--encoder-size", type=int, default=256)
    p.add_argument("--decoder-size", type=int, default=512)
    p.add_argument("--num-mixtures", type=int, default=20)
    p.add_argument("--max-length", type=int, default=250, help="N_max: longer sketches dropped")
    p.add_argument("--pen-loss", default="sketch", choices=PEN_LOSSES)
    p.add_argument("--kl-weight", type=float, default=1.0, help="final KL weight (default 1)")
    p.add_argument("--kl-eta-min", type=float, default=0.01, help="annealing start fraction")
    p.add_argument("--kl-rate", type=float, default=0.9999, help="annealing rate per step")
    p.add_argument("--kl-floor", type=float, default=None,
                   help="free nats per sketch (default 0.2 * latent dim, the paper's KL_min)")
    p.add_argument("--train-limit", type=int, default=None, help="first N training sketches")
    p.add_argument("--test-limit", type=int, default=None, help="first N test sketches")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def evaluate(model: SketchRNN, x, lengths, batch_size: int, seed: int = 0) -> dict[str, float]:
    """Mean per-sketch test reconstruction loss and KL (one ``z ~ q`` per sketch, fixed seed).

    ``recon`` = -(log p(offsets | z) + log p(pen | z)) in nats per sketch; the paper's
    normalisation divides it by N_max (``recon_per_step``) and the KL by the latent dimension.
    """
    was_training = model.training
    model.eval()
    totals = {"offsets": 0.0, "pen": 0.0, "kl": 0.0}
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(x), batch_size):
            terms = model.loss_terms(x[start:start + batch_size], lengths[start:start + batch_size])
            for key in totals:
                totals[key] += float(terms[key].sum())
    model.train(was_training)
    n = len(x)
    recon = -(totals["offsets"] + totals["pen"]) / n
    return {
        "test_recon": recon,
        "test_offsets_nll": -totals["offsets"] / n,
        "test_pen_nll": -totals["pen"] / n,
        "test_kl": totals["kl"] / n,
        "test_recon_per_step": recon / model.max_length,
        "test_kl_per_dim": totals["kl"] / n / model.latent_dim,
    }


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
    kl_floor = 0.2 * args.latent_dim if args.kl_floor is None else args.kl_floor
    model = SketchRNN(
        latent_dim=args.latent_dim,
        encoder_size=args.encoder_size,
        decoder_size=args.decoder_size,
        num_mixtures=args.num_mixtures,
        max_length=args.max_length,
        pen_loss=args.pen_loss,
        kl_weight=args.kl_weight * args.kl_eta_min,
        kl_floor=kl_floor,
    ).to(device)

    def test_curve(info):
        return evaluate(info.module, test_x, test_lengths, args.batch_size, args.seed)

    started = time.perf_counter()
    history = fit(
        model,
        (train_x, train_lengths),
        objective="elbo",
        lr=args.lr,
        clip_norm=args.clip_norm,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=device,
        seed=args.seed,
        callbacks=[
            KLAnnealing(args.kl_eta_min, rate=args.kl_rate, weight=args.kl_weight),
            test_curve,
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
