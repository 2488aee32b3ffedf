"""The state table, its audit table and its meta table, as one portable SQLAlchemy Core schema.

Only generic types are used (text, integers, dates, UTC instants) so the same
definition maps to SQLite, DuckDB, PostgreSQL and Snowflake. Each column's
comment is its one-line documentation; docs/state-table.md is generated from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    Float,
    Index,
    Integer,
    MetaData,
    Sequence,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeEngine

from .backends import GENERIC, backend_named
from .types import StatusType, UTCDateTime

SCHEMA_VERSION = 2  # 2: stage_fingerprint

# The names of the window's columns (contract section 4), defined once.
START_TIME = "source_query_window_start_time"
END_TIME = "source_query_window_end_time"
DURATION_MINUTES = "source_query_window_duration_minutes"


# (group, name, type, NOT NULL, comment). Only the contract's core columns are NOT NULL,
# so rows that other tools write with just those set are valid.
_T = UTCDateTime
COLUMNS: list[tuple[str, str, TypeEngine[Any], bool, str]] = [
    # identity
    (
        "identity",
        "batch_id",
        String(255),
        True,
        "Unique id of this window's record (from [ids] batch_id)",
    ),
    (
        "identity",
        "pipeline_name",
        String(128),
        True,
        "Pipeline the window belongs to; several may share one table",
    ),
    (
        "identity",
        "source_id",
        String(255),
        False,
        "Id of the extract from the source for this window ([ids] source_id)",
    ),
    (
        "identity",
        "stage_id",
        String(255),
        False,
        "Id of the staged data for this window ([ids] stage_id)",
    ),
    (
        "identity",
        "target_id",
        String(255),
        False,
        "Id of the load into the target for this window ([ids] target_id)",
    ),
    (
        "identity",
        "source_category",
        String(255),
        False,
        "Category of the source data ([categories] source_category)",
    ),
    (
        "identity",
        "stage_category",
        String(255),
        False,
        "Category of the staged data ([categories] stage_category)",
    ),
    (
        "identity",
        "target_category",
        String(255),
        False,
        "Category of the target load ([categories] target_category)",
    ),
    (
        "identity",
        "source_type",
        String(64),
        False,
        "Kind of source system, e.g. elasticsearch or files",
    ),
    ("identity", "stage_type", String(64), False, "Kind of stage, e.g. s3 or local"),
    ("identity", "target_type", String(64), False, "Kind of target, e.g. snowflake or sql"),
    # the window
    ("window", START_TIME, _T(), True, "Window start, UTC, inclusive"),
    ("window", END_TIME, _T(), True, "Window end, UTC, exclusive"),
    (
        "window",
        DURATION_MINUTES,
        Integer(),
        True,
        "Real length of the window in whole minutes (a window shorter than a minute: 1, never 0)",
    ),
    (
        "window",
        "window_local_date",
        Date(),
        False,
        "Local day (pipeline timezone) the window's start falls in",
    ),
    (
        "window",
        "window_timezone",
        String(64),
        False,
        "IANA timezone that defined the local day when the row was made",
    ),
    (
        "window",
        "window_local_start",
        String(40),
        False,
        "Window start as local wall time with offset, for people",
    ),
    (
        "window",
        "window_local_end",
        String(40),
        False,
        "Window end as local wall time with offset, for people",
    ),
    (
        "window",
        "window_sequence_in_day",
        Integer(),
        False,
        "1-based position of the window on its day's grid",
    ),
    (
        "window",
        "window_granularity",
        String(16),
        False,
        "Grid the window was made on, e.g. 15m, 1h or 1d",
    ),
    # source extract step
    (
        "source",
        "source_extract_status",
        String(32),
        False,
        "PENDING, RUNNING, DONE or FAILED for the extract step",
    ),
    ("source", "source_extract_started_at", _T(), False, "When the last extract attempt started"),
    ("source", "source_extract_completed_at", _T(), False, "When the extract finished"),
    (
        "source",
        "source_record_count",
        BigInteger(),
        False,
        "Records read from the source for the window",
    ),
    (
        "source",
        "source_bytes",
        BigInteger(),
        False,
        "Bytes read from the source, where the source reports it",
    ),
    (
        "source",
        "source_location",
        Text(),
        False,
        "Where the data was read: index pattern, path or table",
    ),
    ("source", "source_query", Text(), False, "The query used for the window, as text"),
    # stage write step
    (
        "stage",
        "stage_write_status",
        String(32),
        False,
        "PENDING, RUNNING, DONE or FAILED for the stage write",
    ),
    ("stage", "stage_write_started_at", _T(), False, "When the last stage write started"),
    ("stage", "stage_write_completed_at", _T(), False, "When the stage write finished"),
    ("stage", "stage_record_count", BigInteger(), False, "Records written to the stage"),
    ("stage", "stage_bytes", BigInteger(), False, "Bytes written to the stage"),
    ("stage", "stage_location", Text(), False, "URI of the staged data, e.g. s3://bucket/key"),
    (
        "stage",
        "stage_file_format",
        String(32),
        False,
        "Format of the staged data, e.g. ndjson.gz or parquet",
    ),
    ("stage", "stage_file_count", Integer(), False, "Number of staged files"),
    (
        "stage",
        "stage_fingerprint",
        Text(),
        False,
        "What the stage step wrote (sizes and checksums); the target step loads only a stage that still matches",
    ),
    # target load step
    (
        "target",
        "target_load_status",
        String(32),
        False,
        "PENDING, RUNNING, DONE or FAILED for the target load",
    ),
    ("target", "target_load_started_at", _T(), False, "When the last target load started"),
    ("target", "target_load_completed_at", _T(), False, "When the target load finished"),
    (
        "target",
        "target_record_count",
        BigInteger(),
        False,
        "Rows in the target for this window after the load",
    ),
    (
        "target",
        "target_rows_replaced",
        BigInteger(),
        False,
        "Rows of an earlier load of this window that the load replaced",
    ),
    ("target", "target_location", Text(), False, "Table the window was loaded into"),
    (
        "target",
        "target_load_id",
        String(255),
        False,
        "Id the target gave the load, e.g. a Snowflake query id",
    ),
    # lifecycle
    (
        "lifecycle",
        "pipeline_status",
        String(32),
        True,
        "PENDING, IN_PROGRESS, COMPLETED, FAILED or SUPERSEDED",
    ),
    (
        "lifecycle",
        "current_step",
        String(32),
        False,
        "Step in progress or last reached: source, stage, target or done",
    ),
    (
        "lifecycle",
        "retry_count",
        Integer(),
        False,
        "Failed attempts so far (a failure or an expired lease)",
    ),
    ("lifecycle", "attempt_count", Integer(), False, "Claims so far"),
    ("lifecycle", "last_error", Text(), False, "Message of the last failure"),
    ("lifecycle", "last_error_step", String(32), False, "Step in which the last failure happened"),
    ("lifecycle", "last_error_at", _T(), False, "When the last failure was recorded"),
    (
        "lifecycle",
        "last_error_kind",
        String(16),
        False,
        "terminal (no retry can help: FAILED for good), transient, or empty when unknown",
    ),
    (
        "lifecycle",
        "next_attempt_at",
        _T(),
        False,
        "Earliest time a FAILED batch may be claimed again",
    ),
    ("lifecycle", "first_started_at", _T(), False, "When the batch was first claimed"),
    ("lifecycle", "completed_at", _T(), False, "When the batch was marked COMPLETED"),
    (
        "lifecycle",
        "processing_seconds",
        Float(),
        False,
        "Seconds from the last claim to completion",
    ),
    # lease
    ("lease", "worker_id", String(255), False, "Worker holding, or that last held, the claim"),
    (
        "lease",
        "claim_token",
        String(64),
        False,
        "Fencing token of the current claim; changes on every claim",
    ),
    ("lease", "claimed_at", _T(), False, "When the current claim was taken (database clock)"),
    (
        "lease",
        "lease_expires_at",
        _T(),
        False,
        "When the current claim lapses without a heartbeat (database clock)",
    ),
    ("lease", "heartbeat_at", _T(), False, "Last heartbeat of the current claim"),
    # lineage
    (
        "lineage",
        "record_origin",
        String(32),
        False,
        "SCHEDULED, GAP_FILL, EXTERNAL, REQUEUE or MANUAL",
    ),
    ("lineage", "superseded_by", String(255), False, "batch_id of the overlapping window that won"),
    ("lineage", "superseded_at", _T(), False, "When the window was marked SUPERSEDED"),
    ("lineage", "supersede_reason", Text(), False, "Why the window lost, in words"),
    (
        "lineage",
        "populate_run_id",
        String(64),
        False,
        "Id of the populate run that created or last changed the row",
    ),
    ("lineage", "requeue_count", Integer(), False, "Times a user requeued the batch"),
    ("lineage", "last_requeued_at", _T(), False, "When the batch was last requeued"),
    # audit
    ("audit", "created_at", _T(), True, "When the row was inserted (UTC)"),
    ("audit", "updated_at", _T(), True, "When the row last changed (UTC)"),
    (
        "audit",
        "created_by",
        String(255),
        False,
        "Who inserted the row: populate@host or a tool name",
    ),
    ("audit", "updated_by", String(255), False, "Who last changed the row"),
    (
        "audit",
        "config_hash",
        String(64),
        False,
        "Hash of the pipeline config in force when the row was made",
    ),
    ("audit", "schema_version", Integer(), False, "State-table schema version that wrote the row"),
    ("audit", "batch_metadata", Text(), False, "Free-form JSON for the user's own notes and tags"),
]


@dataclass(frozen=True)
class StateTables:
    """The three tables of one state table name: rows, audit events, meta (version, locks)."""

    state: Table
    events: Table
    meta: Table
    metadata: MetaData


def build_tables(
    name: str = "pipeline_state",
    schema: str | None = None,
    dialect: str | None = None,
    status_aliases: tuple[tuple[str, str], ...] = (),
) -> StateTables:
    """The tables for one state-table name, shaped for `dialect` where databases differ:
    Snowflake's standard tables take no indexes (it prunes by micro-partition
    instead), and DuckDB numbers events from a sequence, the others by identity.
    `status_aliases` ([state] status_map) are read as the statuses they mean."""
    metadata = MetaData(schema=schema or None)
    backend = backend_named(dialect) if dialect else GENERIC
    columns = [
        Column(
            col,
            StatusType(status_aliases) if col == "pipeline_status" else typ,
            primary_key=(col == "batch_id"),
            nullable=not notnull,
            comment=comment,
        )
        for _, col, typ, notnull, comment in COLUMNS
    ]
    indexes = (
        []
        if not backend.indexes
        else [
            # populate reads a pipeline ordered by (start, end, batch_id): all of it in the
            # index, so no database sorts a million rows per run.
            Index(
                f"ix_{name}_window",
                "pipeline_name",
                START_TIME,
                END_TIME,
                "batch_id",
            ),
            # batch_id last: claims order by (start, batch_id), which the index then
            # serves directly instead of sorting every PENDING row per claim.
            Index(
                f"ix_{name}_status",
                "pipeline_name",
                "pipeline_status",
                START_TIME,
                "batch_id",
            ),
        ]
    )
    state = Table(
        name, metadata, *columns, *indexes, comment="pipestate: one row per time window of source data"
    )
    event_id_args: list[Any] = []
    if not backend.identity_columns:  # DuckDB: a sequence instead
        event_id_args.append(Sequence(f"{name}_events_seq", metadata=metadata))
    events = Table(
        f"{name}_events",
        metadata,
        Column(
            "event_id",
            Integer() if backend.small_integer_ids else BigInteger(),
            *event_id_args,
            primary_key=True,
            autoincrement=True,
            comment="Increasing id: the order events were written",
        ),
        Column("batch_id", String(255), nullable=False, comment="Batch the event is about"),
        Column("pipeline_name", String(128), nullable=False, comment="Pipeline of the batch"),
        Column("event_type", String(32), nullable=False, comment="CREATED, SUPERSEDED, CLAIMED, ..."),
        Column("worker_id", String(255), comment="Worker or process that caused the event"),
        Column("claim_token", String(64), comment="Claim the event belongs to, for worker events"),
        Column("event_time", UTCDateTime(), nullable=False, comment="When it happened (UTC)"),
        Column("old_status", String(32), comment="Status before the event"),
        Column("new_status", String(32), comment="Status after the event"),
        Column("details", Text(), comment="JSON with what else is worth knowing"),
        *([] if not backend.indexes else [Index(f"ix_{name}_events_batch", "batch_id", "event_id")]),
        comment="pipestate: audit trail, one row per change of a batch's state",
    )
    meta = Table(
        f"{name}_meta",
        metadata,
        Column("name", String(255), primary_key=True, comment="schema_version, or lock:<pipeline>"),
        Column("value", Text(), comment="The value"),
        Column("updated_at", UTCDateTime(), comment="When it was last written"),
        comment="pipestate: schema version and per-pipeline lock rows",
    )
    if not backend.column_comments:
        # The columns are documented in docs/state-table.md instead.
        for table in (state, events, meta):
            table.comment = None
            for column in table.columns:
                column.comment = None
    return StateTables(state=state, events=events, meta=meta, metadata=metadata)


CORE_COLUMNS = tuple(col for _, col, _, notnull, _ in COLUMNS if notnull)
