"""Helpers for the M2 experiments: data splits, a time-budgeted training loop, evaluation.

Kept importable (and tested through the scripts' smoke tests) so the scripts stay short.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import pyrovae
from pyrovae.data import binarize, labelled_split, load_dataset
from pyrovae.data.transforms import DynamicBinarized, epoch_seed
from pyrovae.infer import param_scope
from pyrovae.infer.classification import accuracy, validation_callback
from pyrovae.models.m2 import M2

logger = logging.getLogger("m2")

# The labelled call of TraceEnum_ELBO has no enumerated site; Pyro warns about it every run.
ENUM_WARNING = "TraceEnum_ELBO found no sample sites"


class LabelledStream:
    """``(x_bin, y)`` with ``x`` re-binarised every epoch (a fit stream with ``for_epoch``)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        self.images, self.y = DynamicBinarized(x, seed), y

    def __len__(self) -> int:
        return len(self.images)

    def for_epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (*self.images.for_epoch(epoch), self.y)


class M1Codes:
    """Draws of M1's posterior ``z1 ~ q(z1 | x_bin)``, afresh every epoch (a fit stream).

    Every epoch binarises the images anew (as ``DynamicBinarized``), encodes them with the M1
    VAE and draws one ``z1`` per image; with ``y`` given, yields ``(z1, y)``. The draw depends
    only on ``(seed, epoch)``, so a resumed run sees the same codes.
    """

    def __init__(self, m1, x: torch.Tensor, seed: int, y: torch.Tensor | None = None) -> None:
        self.m1, self.images, self.y, self.seed = m1, DynamicBinarized(x, seed), y, seed

    def __len__(self) -> int:
        return len(self.images)

    def for_epoch(self, epoch: int) -> tuple[torch.Tensor, ...]:
        (x_bin,) = self.images.for_epoch(epoch)
        loc, scale = m1_encode(self.m1, x_bin)
        generator = torch.Generator(device=loc.device)
        generator.manual_seed(epoch_seed(self.seed + 7919, epoch))
        z1 = loc + scale * torch.randn(loc.shape, generator=generator, dtype=loc.dtype,
                                       device=loc.device)
        return (z1,) if self.y is None else (z1, self.y)


def m1_encode(m1, x: torch.Tensor, batch_size: int = 5000) -> tuple[torch.Tensor, torch.Tensor]:
    """M1's ``(loc, scale)`` of ``q(z1 | x)`` [N, K1], computed in chunks."""
    parts = [m1.encode(xb) for xb in x.split(batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@dataclass
class SemiSupervisedData:
    unlabelled: Any
    labelled: Any
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_train: int
    image_shape: tuple[int, int]


def prepare_data(
    dataset: str,
    n_labelled: int,
    n_validation: int,
    seed: int,
    binarization: str = "dynamic",
    limit: int | None = None,
    m1=None,
) -> SemiSupervisedData:
    """Balanced labelled set (``labelled_split``, seeded), the rest unlabelled, a validation split.

    Training images are binarised afresh every epoch (``"dynamic"``) or once (``"static"``);
    validation and test images once, with fixed seeds. ``limit`` keeps the first ``limit``
    training and test images (smoke tests). With an M1 VAE ``m1`` (M1+M2), the data are
    M1's codes instead of pixels: fresh draws of ``q(z1 | x)`` every epoch for training
    (:class:`M1Codes`, dynamic binarisation only), the posterior means of the binarised
    validation and test images.
    """
    train, test = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    x, y, x_test, y_test = train.x, train.y, test.x, test.y
    if limit is not None:
        x, y, x_test, y_test = x[:limit], y[:limit], x_test[:limit], y_test[:limit]
    split = labelled_split(y, n_labelled, n_validation, seed, num_classes=train.num_classes)
    x_l, y_l = x[split.labelled], y[split.labelled]
    x_u = x[split.unlabelled]
    x_val, x_test = binarize(x[split.validation], 10_000 + seed), binarize(x_test, 20_000)
    if m1 is not None:
        if binarization != "dynamic":
            raise ValueError("M1 codes are drawn afresh every epoch: use binarization='dynamic'")
        unlabelled, labelled = M1Codes(m1, x_u, seed), M1Codes(m1, x_l, seed + 1, y_l)
        x_val, x_test = m1_encode(m1, x_val)[0], m1_encode(m1, x_test)[0]
    elif binarization == "dynamic":
        unlabelled, labelled = DynamicBinarized(x_u, seed), LabelledStream(x_l, y_l, seed + 1)
    elif binarization == "static":
        unlabelled, labelled = (binarize(x_u, seed),), (binarize(x_l, seed + 1), y_l)
    else:
        raise ValueError(f"binarization must be 'dynamic' or 'static', got {binarization!r}")
    return SemiSupervisedData(
        unlabelled=unlabelled,
        labelled=labelled,
        x_val=x_val,
        y_val=y[split.validation],
        x_test=x_test,
        y_test=y_test,
        num_train=len(split.labelled) + len(split.unlabelled),
        image_shape=tuple(train.image_shape),
    )


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}")


def labelled_weight(option: str, num_train: int, n_labelled: int) -> float:
    if option == "balanced":
        return (num_train - n_labelled) / n_labelled
    return float(option)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")  # runs may share a summary file
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    tmp.replace(path)


def test_error(model: M2, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of the test examples misclassified by ``argmax q(y|x)``."""
    with param_scope(model):
        return 1.0 - accuracy(model.classify, x, y, num_classes=model.num_classes)


def generative_error(model: M2, x: torch.Tensor, y: torch.Tensor, num_samples: int = 1,
                     batch_size: int = 500) -> float:
    """Fraction misclassified by ``argmax_k L(x, k)``, the generative model's own classification."""
    with param_scope(model):
        guesses = torch.cat([model.class_elbos(xb, num_samples).argmax(-1)
                             for xb in x.split(batch_size)])
    return float((guesses != y).double().mean())


def train_m2(
    model: M2,
    data: SemiSupervisedData,
    out: Path,
    *,
    max_epochs: int,
    max_minutes: float,
    batch_size: int,
    labelled_batch_size: int,
    lr: float,
    lr_decay: float,
    seed: int,
    jit: bool,
    info: dict,
) -> dict:
    """Train one epoch at a time (``fit`` resumed from ``last.pt``) until ``max_epochs`` or the
    time budget, writing ``out/metrics.json`` after every epoch; report the validation-selected
    model (``best.pt``) on the test set.

    An epoch starts only if the time so far plus the longest epoch so far fits in the budget.
    """
    out.mkdir(parents=True, exist_ok=True)
    streams = {"unlabelled": data.unlabelled, "labelled": data.labelled}
    sizes = {"unlabelled": batch_size, "labelled": labelled_batch_size}
    callbacks = [validation_callback(data.x_val, data.y_val)]

    def test_callback(state):
        # Recorded for the learning curve only; never used to select the model.
        return {"test_error_current": 1.0 - accuracy(state.module.classify, data.x_test,
                                                     data.y_test)}

    started, longest = time.perf_counter(), 0.0
    history = None
    metrics: dict[str, Any] = dict(info, status="running")
    for epoch in range(max_epochs):
        elapsed = time.perf_counter() - started
        if epoch and elapsed + longest > 60 * max_minutes:
            metrics["status"] = f"stopped by the time budget ({max_minutes} min) after {epoch}"
            break
        t0 = time.perf_counter()
        history = pyrovae.fit(
            model, streams, objective="enum", jit=jit, lr=lr,
            lr_schedule=f"exponential:{lr_decay}" if lr_decay != 1 else None,
            epochs=epoch + 1, batch_size=sizes, seed=seed,
            callbacks=[*callbacks, test_callback], checkpoint_dir=out, resume=True,
            select_metric="val_accuracy", config=info,
        )
        longest = max(longest, time.perf_counter() - t0)
        metrics.update(
            epochs_done=len(history.epochs),
            wall_seconds=time.perf_counter() - started,
            curve=history.epochs,
            best_epoch=history.best["epoch"],
            best_val_accuracy=history.best["val_accuracy"],
        )
        write_json(out / "metrics.json", metrics)
        row = history.epochs[-1]
        logger.info(
            "epoch %d: loss/example %.2f, val acc %.4f, %.1f s", row["epoch"],
            row["loss_per_example"], row["val_accuracy"], row["seconds"],
        )
    else:
        metrics["status"] = f"finished {max_epochs} epochs"
    best = pyrovae.load_checkpoint(out / "best.pt")
    metrics["test_error"] = test_error(best, data.x_test, data.y_test)
    metrics["time_to_best_seconds"] = sum(
        row["seconds"] for row in metrics["curve"][: metrics["best_epoch"] + 1]
    )
    write_json(out / "metrics.json", metrics)
    return metrics


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


def save_table_of_images(path, images, image_shape, column_titles=(), row_titles=(),
                         title=None, inches=0.55):
    """Images ``[R, C, H*W]`` (values in [0, 1]) as an R x C table with optional headers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = images.detach().cpu().float().numpy() if hasattr(images, "detach") else images
    n_rows, n_cols = images.shape[:2]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(inches * n_cols + 0.6,
                                                      inches * n_rows + 0.5 + 0.3 * bool(title)),
                             squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.imshow(images[r, c].reshape(image_shape), cmap="gray_r", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and column_titles:
                ax.set_title(column_titles[c], fontsize=8)
            if c == 0 and row_titles:
                ax.set_ylabel(row_titles[r], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    top = 1 - 0.35 / (inches * n_rows + 0.8) if title else 1
    fig.tight_layout(pad=0.3, h_pad=0.1, w_pad=0.1, rect=(0, 0, 1, top))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def save_learning_curve(path, curve: list[dict], title: str = "") -> Path:
    """Validation accuracy, test error (never used for selection) and seconds per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(epochs, [100 * row["val_accuracy"] for row in curve], label="validation accuracy")
    if "test_error_current" in curve[0]:
        left.plot(epochs, [100 * (1 - row["test_error_current"]) for row in curve],
                  label="test accuracy (not used for selection)", alpha=0.7)
    best = max(curve, key=lambda row: row["val_accuracy"])
    left.axvline(best["epoch"], color="grey", ls=":", label=f"selected: epoch {best['epoch']}")
    left.set_xlabel("epoch")
    left.set_ylabel("%")
    left.legend(fontsize=8)
    right.plot(epochs, [row["seconds"] for row in curve], marker=".")
    right.set_xlabel("epoch")
    right.set_ylabel("training seconds per epoch")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
