"""Inference: the trainer, the objectives, importance sampling and checkpoints."""

from .anomaly import anomaly_scores, roc_auc
from .callbacks import EpochEnd, History, KLAnnealing, TimeBudget
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .classification import accuracy, error_rate, validation_callback
from .denoising import denoise
from .dreg import DReGImportanceWeightedELBO
from .evaluation import held_out_bound_callback
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
from .schedules import BurdaSchedule, burda_adam
from .scope import param_scope
from .step import SubsampleWarning
from .sum_and_sample import SumAndSampleELBO
from .trainer import NonFiniteLossError, fit

__all__ = [
    "BurdaSchedule",
    "CheckpointError",
    "CheckpointWarning",
    "DReGImportanceWeightedELBO",
    "EpochEnd",
    "GraphSafeELBO",
    "GraphSafeEnumELBO",
    "GraphSafeMeanFieldELBO",
    "History",
    "ImportanceWeightedELBO",
    "KLAnnealing",
    "NonFiniteLossError",
    "accuracy",
    "anomaly_scores",
    "burda_adam",
    "denoise",
    "error_rate",
    "fit",
    "forbid_host_sync",
    "held_out_bound_callback",
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
