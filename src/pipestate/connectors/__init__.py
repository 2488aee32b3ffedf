"""Connectors: the source, stage and target a run moves each batch through.

The Protocols live in `protocols`, the registry that builds them from `[source]`, `[stage]` and
`[target]` in `registry`, the Arrow helpers of the data path in `arrow`; each outside system has its
own module, imported only when a config names it, so that its client library is needed only by
those who use it. What a custom connector needs is importable from here.
"""

from ..errors import ConnectorError, TransientConnectorError
from .arrow import record_batches
from .protocols import BatchContext, LoadResult, Source, Stage, StagedData, Target
from .registry import ENTRY_POINT_GROUP, Options, RecordTableOptions, build_source, build_stage, build_target

__all__ = [
    "ENTRY_POINT_GROUP",
    "BatchContext",
    "ConnectorError",
    "LoadResult",
    "Options",
    "RecordTableOptions",
    "Source",
    "Stage",
    "StagedData",
    "Target",
    "TransientConnectorError",
    "build_source",
    "build_stage",
    "build_target",
    "record_batches",
]
