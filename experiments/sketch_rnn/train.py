"""Train SketchRNN on a sketch-rnn data set; write the test curve and stroke figures.

Trains :class:`pyrovae.models.SketchRNN` with :func:`pyrovae.fit` and the training defaults of
the paper's code (sketch-rnn's hyper-parameters): Adam at lr 1e-3
decaying by 0.9999 per step to 1e-5, every gradient value clipped at 1.0 on the *mean* loss
(the loss averaged over the batch and divided by N_max; ``fit``'s loss is summed over the data
set, so :class:`pyrovae.infer.clipping.MeanLossAdam` divides by N * N_max before clipping),
w_KL = 0.5 annealed as ``w_KL (1 - 0.99 * 0.99995^step)``, KL floor 0.2 per latent dimension.
Batches hold sketches of similar length (:class:`pyrovae.data.buckets.LengthBuckets`), each cut
to its longest sketch. Every epoch, each training sketch's offsets are scaled by two factors
uniform in [1 - r, 1 + r) (the paper's augmentation, ``--random-scale``, r = 0.15) and moved by
uniform noise of one pixel's width (``--dequantize``; :mod:`pyrovae.data.sketch_augment`): the
offsets are integer pixels, and without the noise a mixture with narrow components on the
integer lattice lowers the loss without drawing better sketches. After every epoch it evaluates
the test set on dequantised offsets (``test_dq_*``, the noise of ``--seed``: a continuous
density on continuous data, whose offset NLL bounds that of the integer data and cannot be
gamed; the L_R to judge a run by is ``test_dq_recon_per_step``) and on the raw offsets, as
earlier runs did (``test_recon_per_step``): the reconstruction loss in
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

Not done here: the paper's stroke augmentation (dropping points, which changes the lengths
the batches are bucketed by), recurrent dropout and HyperLSTM decoder.

References:
    D. Ha and D. Eck. A neural representation of sketch drawings. ICLR 2018.
    L. Theis, A. van den Oord and M. Bethge. A note on the evaluation of generative models.
    ICLR 2016 (dequantisation).

Example::

    python -m experiments.sketch_rnn.train --dataset aaron_sheep --minutes 40
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from pyrovae.data.sketches import SKETCH_DATASETS
from pyrovae.infer import read_checkpoint
from pyrovae.models.sketch_rnn import PEN_LOSSES
from pyrovae.runs import sketch as family
from pyrovae.runs.curves import write_curves
from pyrovae.runs.launch import add_device_options, add_parallel_options, fraction
from pyrovae.runs.provenance import evaluates, is_main, provenance, write_json
from pyrovae.runs.script import run_script, start_device


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
    p.add_argument("--random-scale", type=fraction, default=0.15,
                   help="scale each training sketch's dx and dy by factors uniform in "
                   "[1-R, 1+R), fresh every epoch (default 0.15, the paper's; 0 turns it off)")
    p.add_argument("--dequantize", action=argparse.BooleanOptionalAction, default=True,
                   help="add uniform noise of one pixel's width to the training offsets, fresh "
                   "every epoch (default on; --no-dequantize turns it off; the test metrics "
                   "are reported on raw and on dequantised offsets either way)")
    p.add_argument("--train-limit", type=int, default=None, help="first N training sketches")
    p.add_argument("--test-limit", type=int, default=None, help="first N test sketches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None,
                   help="folder holding sketch-rnn-datasets/ (default $PYROVAE_DATA)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = start_device(args)
    out = Path(args.out or f"runs/sketch_rnn/{args.dataset}")
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    options = vars(args)
    last = out / "checkpoints" / "last.pt"
    if last.exists():  # resumed: its data must stay what the run was trained on
        user = (read_checkpoint(last).get("fit_config") or {}).get("user") or {}
        family.check_same_noise(user.get("args") or {}, options)
    sketches = family.data(options, root=args.data_root, device=device)
    model = family.build(options, device)
    cpu_started = time.process_time()
    history, wall = family.train(
        model, sketches, options, device=device, out=out / "checkpoints", resume=True,
        minutes=args.minutes, cpu_minutes=args.cpu_minutes,
        # data_root is where the data lie, not what the run is: a resumed run may move them
        config={"args": {k: v for k, v in options.items() if k != "data_root"}},
    )
    if not evaluates():
        return
    final = history.epochs[-1] if history.epochs else {}
    write_json(
        out / "metrics.json",
        {
            "provenance": provenance(device),
            "args": options,
            "model": model.config,
            "data": {"train": len(sketches.train_x), "test": len(sketches.test_x),
                     "offset_scale": sketches.scale},
            "epochs_done": len(history.epochs),
            "wall_seconds_this_run": wall,
            "cpu_seconds_this_run": time.process_time() - cpu_started,
            "kl_weight_final": family.kl_weight(options),
            "loss_scale": len(sketches.train_x) * args.max_length,
            "test_metrics": (
                "test_dq_*: the test sketches with their integer pixel offsets dequantised "
                f"(+ U[-1/2, 1/2) px, noise of seed {args.seed}), the L_R to judge the run by "
                "is test_dq_recon_per_step; test_dq_offsets_nll_pixels bounds -log P(integer "
                "offsets) from above; test_*: the raw offsets, as in earlier runs"),
            "final": final,
            "history": history.epochs,
        },
    )
    family.save_figures(model, sketches, out, args.dataset, args.seed)
    write_curves(out, history.epochs, f"SketchRNN on {args.dataset}")
    print(f"{len(history.epochs)} epochs, {wall:.0f} s; final {final}; wrote {out}")


if __name__ == "__main__":
    run_script(main)
