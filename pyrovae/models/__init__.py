"""Model/guide pairs."""

from .base import ConfigurableModule, data_plate, take
from .ppca import PPCA, PPCAParams

__all__ = ["ConfigurableModule", "PPCA", "PPCAParams", "data_plate", "take"]
