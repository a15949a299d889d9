"""What each change bought: the one-layer MNIST VAE's test bound and NLL against training CPU-hours.

One line per run: its monitored test ELBO (1 sample, the first 1000 test images, every 5 epochs;
plotted as -ELBO) against the cumulative training time of its epochs, and its final NLL
(K = 5000 importance samples on all 10000 test images, +- one standard error) as a marker at its
end. Every run trained on one torch thread, so an epoch's wall seconds bound its CPU seconds
from above; ``--cpu-seconds`` rescales a run's epochs to a measured CPU total (``/usr/bin/time``
user + system) per stretch of epochs, so the x axis is CPU-hours where it was measured.

Each ``--run`` names a label, a headline ``metrics.json``, the objective inside it and, for an
NLL evaluated by ``experiments.vae.evaluate``, that file and the checkpoint key (``-`` when the
NLL is in the metrics file itself).

Usage: the command of ``results/vae/nll_vs_cpu.png`` is in ``results/vae/README.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments.figures import pyplot, save_figure

ANCHORS = {"Burda et al. VAE (k=1)": 86.76, "nbip/IWAE reproduction, IWAE k=5": 85.18,
           "Burda et al. IWAE k=50": 84.78}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", nargs=5, action="append", required=True,
                   metavar=("LABEL", "METRICS", "OBJECTIVE", "NLL_JSON", "NLL_KEY"),
                   help="a run to plot; NLL_JSON/NLL_KEY '-' when the NLL is in METRICS")
    p.add_argument("--cpu-seconds", nargs="+", action="append", default=[],
                   metavar="ARG", help="RUN_NUMBER (1-based) then FIRST:END=SECONDS for each "
                   "stretch of epochs whose measured CPU time rescales its epochs' seconds")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def cpu_hours(curve: list[dict], stretches: dict[tuple[int, int], float]) -> list[float]:
    """Cumulative training hours at the end of every epoch: epoch seconds, scaled within each
    measured stretch so that the stretch sums to its measured CPU seconds."""
    seconds = [row["seconds"] for row in curve]
    for (first, end), measured in stretches.items():
        wall = sum(seconds[first:end])
        if wall <= 0:
            raise SystemExit(f"epochs {first}:{end} are not in the run's curve")
        seconds[first:end] = [s * measured / wall for s in seconds[first:end]]
    total, hours = 0.0, []
    for s in seconds:
        total += s
        hours.append(total / 3600)
    return hours


def final_nll(metrics: dict, objective: str, nll_json: str, nll_key: str) -> tuple | None:
    """``(nll, stderr)`` on all test images, or None when the run has none yet."""
    if nll_json == "-":
        subset = metrics["runs"][objective].get("test_subset", {})
        if subset.get("num_examples") != 10000:
            return None
        return subset["nll"], subset["nll_stderr"]
    entry = json.loads(Path(nll_json).read_text())["models"][nll_key]
    return entry["nll"], entry["nll_stderr"]


def stretches_by_run(specs: list[list[str]]) -> dict[int, dict[tuple[int, int], float]]:
    out: dict[int, dict[tuple[int, int], float]] = {}
    for spec in specs:
        run, *parts = spec
        for part in parts:
            span, seconds = part.split("=")
            first, end = (int(v) for v in span.split(":"))
            out.setdefault(int(run) - 1, {})[(first, end)] = float(seconds)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    stretches = stretches_by_run(args.cpu_seconds)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    lines = []
    for i, (label, path, objective, nll_json, nll_key) in enumerate(args.run):
        metrics = json.loads(Path(path).read_text())
        curve = metrics["runs"][objective]["curve"]
        hours = cpu_hours(curve, stretches.get(i, {}))
        monitored = [(h, -row["test_elbo"]) for h, row in zip(hours, curve, strict=True)
                     if "test_elbo" in row]
        measured = "CPU-h" if i in stretches else "1-thread wall-h"
        (line,) = ax.plot(*zip(*monitored, strict=True), label=f"{label} ({measured}): -test ELBO")
        nll = final_nll(metrics, objective, nll_json, nll_key)
        if nll is not None:
            ax.errorbar([hours[-1]], [nll[0]], yerr=[nll[1]], fmt="o", color=line.get_color(),
                        capsize=3, label=f"{label}: test NLL {nll[0]:.2f} ± {nll[1]:.2f}")
        lines.append(f"{label}: {len(curve)} epochs, {hours[-1]:.2f} h ({measured})"
                     + (f", NLL {nll[0]:.2f} ± {nll[1]:.2f}" if nll else ", no NLL"))
    for k, (name, value) in enumerate(sorted(ANCHORS.items(), key=lambda item: item[1])):
        ax.axhline(value, ls=":", color="gray")
        # The two lowest anchors are 0.4 nats apart: one label under its line, one over.
        ax.annotate(f"{name}: {value}", (0.02, value), xycoords=("axes fraction", "data"),
                    fontsize=8, color="gray", va="top" if k == 0 else "bottom")
    ax.set_ylim(83, 105)
    ax.set_xlabel("training time, hours of one core")
    ax.set_ylabel("nats per test image (lower is better)")
    ax.set_title("One-stochastic-layer VAE on binarised MNIST: test bound and NLL per CPU-hour")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    save_figure(fig, args.out)
    print("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
