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

from pyrovae.data.sketches import SKETCH_DATASETS, load_sketches
from pyrovae.infer import load_checkpoint
from pyrovae.runs import sketch as family
from pyrovae.runs.launch import add_device_options
from pyrovae.runs.provenance import provenance, write_json
from pyrovae.runs.script import run_script, start_device


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
    n = min(args.sketches, len(test))
    summary = family.complete(model, test.x[:n], test.lengths[:n], args.out, args.dataset,
                              strokes=args.strokes, samples=args.samples,
                              temperatures=args.temperatures, seed=args.seed)
    write_json(args.out / "metrics.json", {
        **provenance(device), "checkpoint": str(args.checkpoint),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "completions": summary, "seconds": time.perf_counter() - started,
    })
    print(f"wrote {args.out}: " + ", ".join(
        f"{k}: {v['mean_drawn_rows']:.1f} rows, {v['ended_fraction']:.2f} ended"
        for k, v in summary.items()))


if __name__ == "__main__":
    run_script(main)
