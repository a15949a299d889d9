"""Anomaly scores from a trained model's likelihood, and the ROC AUC that grades them.

The score of an image is its importance-sampled negative log-likelihood ``-log p(x)``
([`pyrovae.infer.evaluation.importance_nll`][]): images the model finds improbable score high.
Known failure (Nalisnick et al. 2019): likelihood models can give *higher* likelihood to an
out-of-distribution set than to their own (a model of Fashion-MNIST scores MNIST digits, mostly
blank background, as more probable), so the AUC of ``-log p(x)`` can fall below 0.5.

References:
    E. Nalisnick, A. Matsukawa, Y. W. Teh, D. Gorur and B. Lakshminarayanan. Do deep
    generative models know what they don't know? ICLR 2019.
"""

from __future__ import annotations

import torch

from .evaluation import importance_nll


def anomaly_scores(
    module, x: torch.Tensor, num_samples: int = 1000, sample_chunk: int = 100,
    batch_size: int = 500,
) -> torch.Tensor:
    """``-log p(x_n)`` (nats) for every row of ``x`` [N, D]: Tensor [N], high = anomalous.

    The K-sample importance estimate with K = ``num_samples`` (an upper bound on ``-log p(x)``
    in expectation, tight as K grows); see [`pyrovae.infer.evaluation.importance_nll`][].
    """
    return -importance_nll(module, x, num_samples=num_samples, sample_chunk=sample_chunk,
                           batch_size=batch_size)


def roc_auc(negative_scores: torch.Tensor, positive_scores: torch.Tensor) -> float:
    """Area under the ROC curve of a score that should be higher for the positives.

    Equals ``P(s_pos > s_neg) + P(s_pos = s_neg) / 2`` over independent pairs (the Mann-Whitney
    statistic over ``n_pos * n_neg``), computed from mid-ranks in O(n log n).

    Args:
        negative_scores: [n_neg] scores of the negatives (in-distribution images).
        positive_scores: [n_pos] scores of the positives (anomalies).
    """
    neg = torch.as_tensor(negative_scores, dtype=torch.float64).flatten().cpu()
    pos = torch.as_tensor(positive_scores, dtype=torch.float64).flatten().cpu()
    if neg.numel() == 0 or pos.numel() == 0:
        raise ValueError("need at least one negative and one positive score")
    if not (torch.isfinite(neg).all() and torch.isfinite(pos).all()):
        raise ValueError("scores must be finite")
    scores = torch.cat([neg, pos])
    values, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mid_ranks = ends - (counts.double() - 1.0) / 2.0  # 1-based mid-rank of each distinct value
    pos_rank_sum = mid_ranks[inverse[neg.numel():]].sum()
    n_pos, n_neg = pos.numel(), neg.numel()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
