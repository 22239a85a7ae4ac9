"""purempo: a pure-JAX, vectorised MPO trainer for Brax environments."""

from purempo.config import Config, HParams

__all__ = ["Config", "HParams", "Trainer", "make_train", "make_trainer"]
__version__ = "0.1.0"


def __getattr__(name):
    # The trainer imports the simulators (seconds): load it on first use, so that `purempo.cli` and
    # `purempo.driver` start without it when their programs come from the cache (`purempo.programs`).
    if name in ("Trainer", "make_train", "make_trainer"):
        from purempo import train

        return getattr(train, name)
    raise AttributeError(f"module 'purempo' has no attribute {name!r}")
