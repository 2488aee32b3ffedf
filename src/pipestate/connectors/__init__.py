"""Connectors: the source, stage and target a run moves each batch through.

The Protocols and the registry live in `base`; each outside system has its own module, imported
only when a config names it, so that its client library is needed only by those who use it.
"""

from .base import (
    ENTRY_POINT_GROUP,
    BatchContext,
    ConnectorError,
    LoadResult,
    Source,
    Stage,
    StagedData,
    Target,
    TransientConnectorError,
    build_source,
    build_stage,
    build_target,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "BatchContext",
    "ConnectorError",
    "LoadResult",
    "Source",
    "Stage",
    "StagedData",
    "Target",
    "TransientConnectorError",
    "build_source",
    "build_stage",
    "build_target",
]
