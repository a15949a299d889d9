"""Model/guide pairs."""

from .base import ConfigurableModule, DataError, data_plate, take
from .char_rnn import CharRNN
from .factor_analysis import FactorAnalysis, FAParams
from .ica import ICA, match_components
from .m2 import M2
from .nmf import NMF
from .ppca import PPCA, PPCAParams
from .sketch_rnn import SketchRNN
from .smiles_vae import SMILESVAE
from .vae import VAE

__all__ = [
    "CharRNN",
    "ConfigurableModule",
    "DataError",
    "FAParams",
    "FactorAnalysis",
    "ICA",
    "M2",
    "NMF",
    "match_components",
    "PPCA",
    "PPCAParams",
    "SketchRNN",
    "SMILESVAE",
    "VAE",
    "data_plate",
    "take",
]
