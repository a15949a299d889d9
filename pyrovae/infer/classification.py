"""Classification metrics for semi-supervised models, and a validation callback for ``fit``.

Accuracy is the number of correctly classified examples divided by the number of examples: it
never assumes every batch is full, so the short last batch counts exactly as many examples as
it holds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .callbacks import EpochEnd

Classifier = Callable[[torch.Tensor], torch.Tensor]


def _check_pair(x: torch.Tensor, y: torch.Tensor, num_classes: int | None) -> None:
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point():
        raise ValueError("y must be a 1-D integer tensor of class labels")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise ValueError("no examples to classify (N = 0)")
    if num_classes is not None and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")


@torch.no_grad()
def count_correct(
    classify: Classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000
) -> tuple[int, int]:
    """``(correct, total)``: how many of the N examples ``classify`` labels as ``y``.

    Args:
        classify: ``x [M, D] -> predicted labels [M]`` (e.g. ``M2.classify``).
        x: inputs [N, D].
        y: labels [N] (integer).
        batch_size: examples per call of ``classify`` (default 1000; the last batch may be short).
    """
    _check_pair(x, y, None)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    correct = torch.zeros((), dtype=torch.long, device=y.device)
    for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
        pred = classify(xb)
        if pred.shape != yb.shape:
            raise ValueError(f"classify returned shape {list(pred.shape)} for {len(yb)} examples")
        correct += (pred.to(yb.device) == yb).sum()
    return int(correct), int(y.shape[0])


def accuracy(
    classify: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 1000,
    num_classes: int | None = None,
) -> float:
    """Fraction of the N examples classified correctly (correct examples / N).

    ``num_classes``, when given, also checks that every label lies in ``0..num_classes-1``.
    """
    _check_pair(x, y, num_classes)
    correct, total = count_correct(classify, x, y, batch_size)
    return correct / total


def error_rate(classify: Classifier, x: torch.Tensor, y: torch.Tensor, **kwargs) -> float:
    """``1 - accuracy``: the fraction of the N examples classified wrongly."""
    return 1.0 - accuracy(classify, x, y, **kwargs)


def validation_callback(
    x: torch.Tensor,
    y: torch.Tensor,
    name: str = "val_accuracy",
    batch_size: int = 1000,
) -> Callable[[EpochEnd], dict[str, float]]:
    """A ``fit`` callback returning ``{name: accuracy of module.classify on (x, y)}`` each epoch.

    Use with ``fit(..., callbacks=[validation_callback(x_val, y_val)],
    select_metric="val_accuracy")`` to keep the best model by validation accuracy in ``best.pt``.
    The module is put in eval mode for the evaluation and back in train mode afterwards.
    """
    _check_pair(x, y, None)

    def callback(info: EpochEnd) -> dict[str, float]:
        module = info.module
        if module is None or not hasattr(module, "classify"):
            raise ValueError("validation_callback needs a module with a classify(x) method")
        was_training = module.training
        module.eval()
        try:
            # fit already runs in a fresh param store holding exactly this module's parameters.
            value = accuracy(module.classify, x.to(_device_of(module, x)), y, batch_size)
        finally:
            module.train(was_training)
        return {name: value}

    return callback


def _device_of(module: torch.nn.Module, x: torch.Tensor) -> torch.device:
    for p in module.parameters():
        return p.device
    return x.device
