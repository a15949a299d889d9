"""pyrovae: deep latent-variable models as Pyro model/guide pairs, trained with SVI."""

import logging

from .infer import History, fit, load_checkpoint, save_checkpoint

__version__ = "0.1.0"
__all__ = ["History", "fit", "load_checkpoint", "save_checkpoint"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
