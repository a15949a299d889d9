"""Inference: the trainer, the objectives, importance sampling and checkpoints."""

from .anomaly import anomaly_scores, roc_auc
from .callbacks import EpochEnd, History, TimeBudget
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .classification import accuracy, error_rate, validation_callback
from .denoising import denoise
from .graph_safe import (
    GraphSafeELBO,
    GraphSafeEnumELBO,
    GraphSafeMeanFieldELBO,
    forbid_host_sync,
)
from .importance import importance_log_likelihood, log_importance_weights
from .imputation import impute, make_mask, missing_log_likelihood
from .objectives import ImportanceWeightedELBO, make_objective
from .resume import CheckpointWarning
from .scope import param_scope
from .step import SubsampleWarning
from .sum_and_sample import SumAndSampleELBO
from .trainer import NonFiniteLossError, fit

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "EpochEnd",
    "GraphSafeELBO",
    "GraphSafeEnumELBO",
    "GraphSafeMeanFieldELBO",
    "History",
    "ImportanceWeightedELBO",
    "NonFiniteLossError",
    "accuracy",
    "anomaly_scores",
    "denoise",
    "error_rate",
    "fit",
    "forbid_host_sync",
    "importance_log_likelihood",
    "impute",
    "load_checkpoint",
    "log_importance_weights",
    "make_mask",
    "make_objective",
    "missing_log_likelihood",
    "param_scope",
    "read_checkpoint",
    "roc_auc",
    "save_checkpoint",
    "SubsampleWarning",
    "SumAndSampleELBO",
    "TimeBudget",
    "validation_callback",
]
