"""Model/guide pairs."""

from .base import ConfigurableModule, data_plate, take
from .factor_analysis import FactorAnalysis, FAParams
from .ica import ICA, match_components
from .m2 import M2
from .nmf import NMF
from .ppca import PPCA, PPCAParams
from .smiles_vae import SMILESVAE
from .vae import VAE

__all__ = [
    "ConfigurableModule",
    "FAParams",
    "FactorAnalysis",
    "ICA",
    "M2",
    "NMF",
    "match_components",
    "PPCA",
    "PPCAParams",
    "SMILESVAE",
    "VAE",
    "data_plate",
    "take",
]
