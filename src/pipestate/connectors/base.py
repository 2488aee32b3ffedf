"""Compatibility: the names custom connectors imported from `pipestate.connectors.base` before
0.2, now in `protocols`, `registry` and `arrow`. Import them from `pipestate.connectors` instead."""

from ..errors import ConnectorError, TransientConnectorError
from .arrow import CHUNK_ROWS, conform, json_default, merge_schemas, parse_instant, record_batches, utc_times
from .protocols import BatchContext, LoadResult, Source, Stage, StagedData, Target
from .registry import (
    ENTRY_POINT_GROUP,
    RESERVED_COLUMNS,
    Options,
    RecordTableOptions,
    build_source,
    build_stage,
    build_target,
    require,
    validate_options,
)

__all__ = [
    "CHUNK_ROWS",
    "ENTRY_POINT_GROUP",
    "RESERVED_COLUMNS",
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
    "conform",
    "json_default",
    "merge_schemas",
    "parse_instant",
    "record_batches",
    "require",
    "utc_times",
    "validate_options",
]
