"""Finish my drawing: complete test sketches from their first strokes with a trained SketchRNN.

For each of ``--sketches`` test sketches, keeps its first ``--strokes`` strokes and lets the
decoder draw the rest (:func:`pyrovae.infer.sketch_completion.complete_sketch`) at each of
``--temperatures``, with the latent code from the partial sketch's own encoding
(``encode``) and from the prior (``prior``). Writes one figure per code source (rows: a test
sketch, its kept strokes, then completions per temperature; given strokes black, drawn ones
blue) and ``metrics.json`` with each setting's mean drawn length and the fraction of completions
that ended before N_max.

    python -m experiments.sketch_rnn.complete \
        --checkpoint runs/sketch_rnn/aaron_sheep/checkpoints/last.pt --out runs/sketch_rnn/complete

References:
    D. Ha and D. Eck. A neural representation of sketch drawings. ICLR 2018 (section 5).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from experiments.sketch_rnn.plots import save_completion_grid
from pyrovae.data.sketches import SKETCH_DATASETS, load_sketches
from pyrovae.infer import load_checkpoint
from pyrovae.infer.sketch_completion import complete_sketch, first_strokes
from pyrovae.runs.launch import add_device_options
from pyrovae.runs.provenance import provenance, write_json
from pyrovae.runs.script import start_device


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path,
                   default=Path("runs/sketch_rnn/aaron_sheep/checkpoints/last.pt"))
    p.add_argument("--dataset", default="aaron_sheep", choices=sorted(SKETCH_DATASETS))
    p.add_argument("--sketches", type=int, default=4, help="test sketches to complete")
    p.add_argument("--strokes", type=int, default=2, help="strokes kept of each (default 2)")
    p.add_argument("--samples", type=int, default=6, help="completions per temperature")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.1, 0.3, 0.6])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/sketch_rnn/complete"))
    add_device_options(p)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = start_device(args)
    started = time.perf_counter()
    model = load_checkpoint(args.checkpoint, map_location=device).eval()
    test = load_sketches(args.dataset, "test", max_length=model.max_length,
                         num_steps=model.max_length + 1, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    summary = {}
    for latent in ("encode", "prior"):
        rows, titles, kept = [], [], []
        for i in range(min(args.sketches, len(test))):
            x, length = test.x[i], int(test.lengths[i])
            prefix = first_strokes(x, length, args.strokes)
            rows += [(x.unsqueeze(0), test.lengths[i:i + 1]),
                     (prefix.unsqueeze(0), torch.tensor([len(prefix)], device=device))]
            titles += [f"test sketch {i}", f"its first {args.strokes} strokes"]
            kept += [length, len(prefix)]
            for tau in args.temperatures:
                drawn, lengths = complete_sketch(model, prefix, latent, args.samples, tau,
                                                 generator=generator)
                rows.append((drawn, lengths))
                titles.append(f"z: {latent}, tau={tau}")
                kept.append(len(prefix))
                stats = summary.setdefault(f"{latent}/tau={tau}", {"drawn_rows": 0.0,
                                                                   "ended": 0.0, "n": 0})
                stats["drawn_rows"] += float((lengths - len(prefix)).sum())
                stats["ended"] += float((lengths < model.max_length).sum())
                stats["n"] += len(lengths)
        source = "the partial sketch" if latent == "encode" else "the prior"
        save_completion_grid(args.out / f"completion_{latent}.png", rows, kept, titles,
                             f"{args.dataset}: finishing test sketches (black: given, blue: "
                             f"drawn), z from {source}")
    for stats in summary.values():
        stats["mean_drawn_rows"] = stats.pop("drawn_rows") / stats["n"]
        stats["ended_fraction"] = stats.pop("ended") / stats["n"]
    write_json(args.out / "metrics.json", {
        **provenance(device), "checkpoint": str(args.checkpoint),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "completions": summary, "seconds": time.perf_counter() - started,
    })
    print(f"wrote {args.out}: " + ", ".join(
        f"{k}: {v['mean_drawn_rows']:.1f} rows, {v['ended_fraction']:.2f} ended"
        for k, v in summary.items()))


if __name__ == "__main__":
    main()
