"""purempo: a pure-JAX, vectorised MPO trainer for Brax environments."""

from purempo.config import Config, HParams
from purempo.train import Trainer, make_train, make_trainer

__all__ = ["Config", "HParams", "Trainer", "make_train", "make_trainer"]
__version__ = "0.1.0"
