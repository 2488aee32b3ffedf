"""pipestate: the state table in front of every run of a time-windowed batch pipeline."""

from .config import Config, load_config
from .errors import ConfigError, LeaseLost, PipestateError, StateStoreError

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "LeaseLost",
    "PipestateError",
    "StateStoreError",
    "__version__",
    "load_config",
]
