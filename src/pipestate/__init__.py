"""pipestate: the state table in front of every run of a time-windowed batch pipeline.

    from pipestate import PipelineStateManager, Worker

    with PipelineStateManager("pipestate.toml") as manager:
        manager.populate_pipeline_batches()
        Worker(manager).run(lambda batch: copy_window(batch.start, batch.end))

The names below are imported on first use, so `import pipestate` (and
`pipestate --help`) does not load SQLAlchemy, pydantic or any connector.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, LeaseLost, PipestateError, StateStoreError

if TYPE_CHECKING:
    from .config import Config, load_config
    from .manager import PipelineStateManager
    from .ops.batch import Batch
    from .ops.populate_report import PopulateReport
    from .run.runner import RunResult, run_pipeline
    from .run.worker import RunSummary, Worker
    from .statuses import Status

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "Config",
    "ConfigError",
    "LeaseLost",
    "PipelineStateManager",
    "PipestateError",
    "PopulateReport",
    "RunResult",
    "RunSummary",
    "StateStoreError",
    "Status",
    "Worker",
    "__version__",
    "load_config",
    "run_pipeline",
]

# name -> the module that defines it, imported when the name is first used.
_LAZY = {
    "Batch": "ops.batch",
    "Config": "config",
    "load_config": "config",
    "PipelineStateManager": "manager",
    "PopulateReport": "ops.populate_report",
    "RunResult": "run.runner",
    "run_pipeline": "run.runner",
    "Status": "statuses",
    "RunSummary": "run.worker",
    "Worker": "run.worker",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pipestate' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
