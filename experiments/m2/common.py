"""Helpers for the M2 experiments: data splits, time-budgeted training, evaluation.

Not a script: the modules of ``experiments.m2`` import it; their smoke tests cover it.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

import pyrovae
from experiments.common import evaluates, is_main, write_json
from pyrovae.data import (
    DynamicBinarized,
    LabelledStream,
    M1Codes,
    binarize,
    encode_in_chunks,
    labelled_split,
    load_dataset,
)
from pyrovae.data.streams import SemiSupervisedData, active_dimensions
from pyrovae.infer import TimeBudget, param_scope
from pyrovae.infer.classification import accuracy, validation_callback
from pyrovae.models.m2 import M2

logger = logging.getLogger("m2")


def prepare_data(
    dataset: str,
    n_labelled: int,
    n_validation: int,
    seed: int,
    binarization: str = "dynamic",
    limit: int | None = None,
    m1=None,
    device: torch.device | str | None = None,
    m1_min_std: float = 0.0,
) -> SemiSupervisedData:
    """Balanced labelled set (``labelled_split``, seeded), the rest unlabelled, a validation split.

    Training images are binarised afresh every epoch (``"dynamic"``) or once (``"static"``),
    validation and test images once, with fixed seeds; or every image keeps its grey levels in
    [0, 1] (``"grey"``, the papers' input, for a Bernoulli likelihood with
    ``allow_continuous=True``); every tensor on ``device`` (default
    the CPU; ``m1`` must be there too). ``limit`` keeps the first ``limit``
    training and test images (smoke tests). With an M1 VAE ``m1`` (M1+M2), the data are
    M1's codes instead of pixels: fresh draws of ``q(z1 | x)`` every epoch for training
    (:class:`M1Codes`, of dynamically binarised images, or of the grey levels with ``"grey"``),
    the posterior means of the (binarised or grey) validation and test images.
    """
    train = load_dataset(dataset, "train", device=device)
    test = load_dataset(dataset, "test", device=device)
    x, y, x_test, y_test = train.x, train.y, test.x, test.y
    if limit is not None:
        x, y, x_test, y_test = x[:limit], y[:limit], x_test[:limit], y_test[:limit]
    split = labelled_split(y, n_labelled, n_validation, seed, num_classes=train.num_classes)
    x_l, y_l = x[split.labelled], y[split.labelled]
    x_u = x[split.unlabelled]
    if binarization == "grey" and m1 is None:
        return SemiSupervisedData(
            unlabelled=(x_u,), labelled=(x_l, y_l), x_val=x[split.validation],
            y_val=y[split.validation], x_test=x_test, y_test=y_test,
            num_train=len(split.labelled) + len(split.unlabelled),
            image_shape=tuple(train.image_shape),
        )
    grey = binarization == "grey"
    if not grey:
        x_val, x_test = binarize(x[split.validation], 10_000 + seed), binarize(x_test, 20_000)
    else:
        x_val = x[split.validation]
    if m1 is not None:
        if binarization not in ("dynamic", "grey"):
            raise ValueError("M1 codes are drawn afresh every epoch: use binarization='dynamic' "
                             "(or 'grey' for an M1 of grey levels)")
        keep = None
        if m1_min_std > 0:
            x_activity = x_u if grey else binarize(x_u, 30_000 + seed)
            keep, _ = active_dimensions(m1, x_activity, m1_min_std)
            if len(keep) == 0:
                raise ValueError(f"no M1 dimension has a posterior-mean std above {m1_min_std}")
        unlabelled = M1Codes(m1, x_u, seed, keep=keep, binarize=not grey)
        labelled = M1Codes(m1, x_l, seed + 1, y_l, keep=keep, binarize=not grey)
        x_val, x_test = encode_in_chunks(m1, x_val)[0], encode_in_chunks(m1, x_test)[0]
        if keep is not None:
            x_val, x_test = x_val[:, keep], x_test[:, keep]
    elif binarization == "dynamic":
        unlabelled, labelled = DynamicBinarized(x_u, seed), LabelledStream(x_l, y_l, seed + 1)
    elif binarization == "static":
        unlabelled, labelled = (binarize(x_u, seed),), (binarize(x_l, seed + 1), y_l)
    else:
        raise ValueError(
            f"binarization must be 'dynamic', 'static' or 'grey', got {binarization!r}")
    return SemiSupervisedData(
        unlabelled=unlabelled,
        labelled=labelled,
        x_val=x_val,
        y_val=y[split.validation],
        x_test=x_test,
        y_test=y_test,
        num_train=len(split.labelled) + len(split.unlabelled),
        image_shape=tuple(train.image_shape),
        m1_dims_kept=None if m1 is None else (
            list(range(x_val.shape[1])) if keep is None else keep.tolist()),
    )


def labelled_weight(option: str, num_train: int, n_labelled: int) -> float:
    if option == "balanced":
        return (num_train - n_labelled) / n_labelled
    return float(option)


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
    device: torch.device | str | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    test_curve: bool = False,
    test_when_stopped: bool = True,
    parallel: dict | None = None,
    objective: str = "enum",
    precision: str = "fp32",
) -> dict:
    """One ``pyrovae.fit`` (resumed from ``out/last.pt`` when there is one) for ``max_epochs``
    epochs or until ``TimeBudget(max_minutes)`` stops it, writing ``out/metrics.json`` after
    every epoch; report the validation-selected model (``best.pt``) on the test set.

    The epoch that crosses the budget is finished; a later invocation with the same ``out``
    goes on from there. The test set is read once, by the selected model at the end, unless
    ``test_curve`` (a diagnostic) records the current model's test error every epoch too.
    Adam's ``betas`` other than torch's default ``(0.9, 0.999)`` use :class:`AdamWithBetas`.
    With ``test_when_stopped=False`` an invocation stopped by the budget before ``max_epochs``
    does not read the test set at all (a run resumed in many invocations then reads it once).
    Only where ``experiments.common.evaluates`` (rank 0) is the test set read.
    ``parallel``: ``fit``'s ``devices`` and ``num_nodes`` (``experiments.common.parallel_options``).
    ``objective`` and ``precision``: ``fit``'s (``"enum"`` or ``"sum_and_sample"``; ``"fp32"`` or
    ``"bf16"``).
    """
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
    streams = {"unlabelled": data.unlabelled, "labelled": data.labelled}
    sizes = {"unlabelled": batch_size, "labelled": labelled_batch_size}
    started = time.perf_counter()
    metrics: dict[str, Any] = dict(info, status="running")

    def test_callback(state):
        # Recorded for the learning curve only; never used to select the model.
        return {"test_error_current": 1.0 - accuracy(state.module.classify, data.x_test,
                                                     data.y_test)}

    def report(state) -> None:
        row, best = state.row, state.history.best
        if best is None or row["val_accuracy"] > best["val_accuracy"]:
            best = row
        metrics.update(
            epochs_done=len(state.history.epochs) + 1,
            wall_seconds=time.perf_counter() - started,
            curve=[*state.history.epochs, row],
            best_epoch=best["epoch"],
            best_val_accuracy=best["val_accuracy"],
        )
        write_json(out / "metrics.json", metrics)
        logger.info("epoch %d: loss/example %.2f, val acc %.4f, %.1f s", row["epoch"],
                    row["loss_per_example"], row["val_accuracy"], row["seconds"])

    callbacks = [validation_callback(data.x_val, data.y_val)]
    if test_curve:
        callbacks.append(test_callback)
    optimizer = "adam" if tuple(betas) == (0.9, 0.999) else AdamWithBetas(tuple(betas))
    history = pyrovae.fit(
        model, streams, objective=objective, precision=precision, jit=jit, lr=lr,
        optimizer=optimizer,
        lr_schedule=f"exponential:{lr_decay}" if lr_decay != 1 else None,
        epochs=max_epochs, batch_size=sizes, seed=seed, device=device,
        callbacks=[*callbacks, report, TimeBudget(max_minutes)],
        checkpoint_dir=out, resume=True, select_metric="val_accuracy", config=info,
        **(parallel or {}),
    )
    done = len(history.epochs)
    metrics.update(
        epochs_done=done, curve=history.epochs, best_epoch=history.best["epoch"],
        best_val_accuracy=history.best["val_accuracy"],
        status=(f"finished {max_epochs} epochs" if done >= max_epochs
                else f"stopped by the time budget ({max_minutes} min) after {done}"),
    )
    if not evaluates():
        return metrics  # without a test error: rank 0 tests
    if done < max_epochs and not test_when_stopped:
        metrics.pop("test_error", None)
        write_json(out / "metrics.json", metrics)
        return metrics
    best = pyrovae.load_checkpoint(out / "best.pt", map_location=data.x_test.device)
    metrics["test_error"] = test_error(best, data.x_test, data.y_test)
    metrics["time_to_best_seconds"] = sum(
        row["seconds"] for row in metrics["curve"][: metrics["best_epoch"] + 1]
    )
    write_json(out / "metrics.json", metrics)
    return metrics


class AdamWithBetas:
    """``fit``'s ``optimizer=``: ``torch.optim.Adam`` with given betas (e.g. Pyro's SS-VAE's
    (0.95, 0.999)). Its ``repr`` names the betas, so that a resumed run recognises it."""

    def __init__(self, betas: tuple[float, float]) -> None:
        self.betas = (float(betas[0]), float(betas[1]))

    def __call__(self, params, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, betas=self.betas)

    def __repr__(self) -> str:
        return f"AdamWithBetas({self.betas})"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)
