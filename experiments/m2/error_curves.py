"""Validation error of M2 runs against training epochs and CPU-minutes, one line per run.

Each ``--run`` names a label and a run's ``metrics.json`` (``experiments.m2.mnist`` writes one per
``labels{N}_seed{S}`` folder). The x axis of the right panel is CPU-minutes: the run's measured
``cpu_seconds`` (user + system time of its last invocation, or the total ``--cpu-seconds`` gives
for a run resumed over several) spread over its epochs in proportion to their wall seconds. A run's
selected epoch (best validation accuracy) is marked, with its test error in the legend when the
run has one. ``--target`` draws a horizontal line (e.g. the paper's number).

Usage (the command of each committed figure is in its folder's README):
    python -m experiments.m2.error_curves --out fig.png \\
        --run "lr 3e-4" runs/m1m2_c/labels100_seed0/metrics.json --target "Kingma M1+M2" 3.33
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.figures import pyplot, save_figure


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", nargs=2, action="append", required=True, metavar=("LABEL", "METRICS"))
    p.add_argument("--cpu-seconds", nargs=2, action="append", default=[],
                   metavar=("RUN_NUMBER", "SECONDS"),
                   help="a run's (1-based) total training CPU seconds, where its metrics.json "
                   "holds only its last invocation's")
    p.add_argument("--target", nargs=2, action="append", default=[], metavar=("LABEL", "PERCENT"))
    p.add_argument("--title", default="M2: validation error by epoch and CPU time")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def cpu_minutes(curve: list[dict], cpu_seconds: float) -> list[float]:
    """Cumulative CPU-minutes at the end of every epoch: ``cpu_seconds`` shared out over the
    epochs in proportion to their wall seconds."""
    wall = [row["seconds"] for row in curve]
    total = sum(wall)
    if not curve or total <= 0:
        raise ValueError("the run's curve has no timed epochs")
    done, minutes = 0.0, []
    for seconds in wall:
        done += seconds
        minutes.append(done / total * cpu_seconds / 60)
    return minutes


def load(label: str, path: str, cpu_seconds: float | None) -> dict:
    metrics = json.loads(Path(path).read_text())
    curve = metrics["curve"]
    errors = [100 * (1 - row["val_accuracy"]) for row in curve]
    cpu = cpu_seconds if cpu_seconds is not None else metrics["cpu_seconds"]
    best = metrics["best_epoch"]
    test = metrics.get("test_error")
    return {"label": label + (f" (test {100 * test:.2f} %)" if test is not None else ""),
            "epochs": [row["epoch"] + 1 for row in curve], "errors": errors,
            "minutes": cpu_minutes(curve, cpu), "best": best}


def run(args: argparse.Namespace) -> list[dict]:
    totals = {int(number) - 1: float(seconds) for number, seconds in args.cpu_seconds}
    runs = [load(label, path, totals.get(i)) for i, (label, path) in enumerate(args.run)]
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for line in runs:
        for ax, x in zip(axes, (line["epochs"], line["minutes"]), strict=True):
            drawn = ax.plot(x, line["errors"], lw=1.2, label=line["label"])[0]
            ax.plot([x[line["best"]]], [line["errors"][line["best"]]], "o",
                    color=drawn.get_color(), ms=5)
    for label, percent in args.target:
        for ax in axes:
            ax.axhline(float(percent), color="0.3", ls="--", lw=1)
        # left of the middle, where the curves are still well above the targets
        axes[0].annotate(f"{label}: {float(percent):g} %", (0.3, float(percent)),
                         xycoords=("axes fraction", "data"), ha="left", va="bottom", fontsize=9)
    for ax, xlabel in zip(axes, ("epoch", "training CPU-minutes (one core)"), strict=True):
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("validation error (%), log scale")
    axes[0].legend(fontsize=8, loc="upper right")
    fig.suptitle(args.title + " (dot: selected epoch)")
    save_figure(fig, args.out)
    return runs


def main(argv=None) -> None:
    args = parse_args(argv)
    for line in run(args):
        best = line["best"]
        print(f"{line['label']}: best validation error {line['errors'][best]:.2f} % at epoch "
              f"{line['epochs'][best]}, {line['minutes'][-1]:.1f} CPU-minutes")


if __name__ == "__main__":
    main()
