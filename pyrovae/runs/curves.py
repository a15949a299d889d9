"""A run's training curve, for people and for spreadsheets: ``metrics.csv`` (one row per epoch,
every number of ``fit``'s history) and ``curve.png`` (the training loss per example against the
epoch, with the run's held-out metric beside it where it has one). Every ``train`` of the
command line writes both into its run folder, on rank 0.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyrovae.runs.provenance import is_main

CSV_FILE = "metrics.csv"
CURVE_FILE = "curve.png"

#: Held-out metrics a history may hold, the first found drawn: name -> (legend, axis label).
TEST_METRICS = {
    "test_elbo": ("test ELBO", "test ELBO (nats per example)"),
    "val_accuracy": ("validation accuracy", "validation accuracy"),
    "test_dq_recon": ("test reconstruction, dequantised offsets",
                      "test reconstruction loss, dequantised (nats per sketch)"),
    "test_recon": ("test reconstruction", "test reconstruction loss (nats per sketch)"),
    "kl_per_example": ("held-out KL", "held-out KL (nats per example)"),
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """``rows`` (``fit``'s history) as CSV: one line per epoch, a column per number any row
    holds (in order of first appearance), empty where a row lacks it."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k, v in row.items() if _number(v) and k not in columns]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: row.get(k, "") for k in columns} for row in rows])
    return path


def test_metric(rows: Sequence[dict[str, Any]]) -> str | None:
    """The first of `TEST_METRICS` that some row of ``rows`` holds, else None."""
    return next((name for name in TEST_METRICS if any(name in row for row in rows)), None)


def save_curve(path: str | os.PathLike, rows: Sequence[dict[str, Any]], title: str) -> Path:
    """The training loss per example (``loss_per_example``) against the epoch (counted from
    1) and, on a second axis, the held-out metric of `test_metric`; titled ``title``."""
    from pyrovae.plots import pyplot

    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] + 1 for row in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(epochs, [row["loss_per_example"] for row in rows], marker="o", markersize=3,
            color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss per example (nats)", color="tab:blue")
    handles = ax.get_lines()
    name = test_metric(rows)
    if name is not None:
        shown = [(row["epoch"] + 1, row[name]) for row in rows
                 if _number(row.get(name)) and math.isfinite(row[name])]
        other = ax.twinx()
        handles += other.plot([e for e, _ in shown], [v for _, v in shown], marker="s",
                              markersize=3, color="tab:orange", label=TEST_METRICS[name][0])
        other.set_ylabel(TEST_METRICS[name][1], color="tab:orange")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(epochs) == 1:  # one point: whole epochs either side, not a tick every 0.015
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    # above the axes, so that neither curve is hidden under it
    ax.legend(handles=handles, labels=[h.get_label() for h in handles], loc="lower center",
              bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False, fontsize=9)
    ax.set_title(title, pad=24)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_curves(out: str | os.PathLike, rows: Sequence[dict[str, Any]], title: str) -> list:
    """``out/metrics.csv`` and ``out/curve.png`` of the history ``rows`` (nothing on ranks
    other than 0, or for an empty history); returns the paths written."""
    if not rows or not is_main():
        return []
    out = Path(out)
    return [write_csv(out / CSV_FILE, rows), save_curve(out / CURVE_FILE, rows, title)]
