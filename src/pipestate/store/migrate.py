"""The state table's schema brought up to date: tables created, missing optional columns added,
zone-less instant columns refused or converted (`init-db`)."""

from __future__ import annotations

from sqlalchemy import (
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection

from ..errors import SchemaError
from .engine import (
    serialize_schema_changes,
)
from .schema import COLUMNS, CORE_COLUMNS, SCHEMA_VERSION
from .store import StateStore, present_columns, refuse_newer
from .types import UTCDateTime


def init_db(store: StateStore, migrate_timestamps: bool = False) -> list[str]:
    """Create missing tables and columns (idempotent); returns what it did.

    Zone-less instants on PostgreSQL are refused, or converted with
    `migrate_timestamps` (see `zone_less_instants`)."""
    actions: list[str] = []
    with store.transaction(create=True) as conn:
        serialize_schema_changes(conn, f"pipestate init-db {store.tables.state.fullname}")
        inspector = inspect(conn)
        schema = store.tables.state.schema
        for table in (store.tables.state, store.tables.events, store.tables.meta):
            if not inspector.has_table(table.name, schema=schema):
                actions.append(f"created table {table.name}")
        store.tables.metadata.create_all(conn, checkfirst=True)
        actions += add_missing_columns(store, conn)
        store.absent_columns = frozenset()
        actions += zone_less_instants(store, conn, migrate_timestamps)
        version = conn.execute(
            select(store.tables.meta.c.value).where(store.tables.meta.c.name == "schema_version")
        ).scalar()
        now = store.now(conn)
        if version is None:
            conn.execute(
                insert(store.tables.meta).values(
                    name="schema_version", value=str(SCHEMA_VERSION), updated_at=now
                )
            )
            actions.append(f"recorded schema version {SCHEMA_VERSION}")
        else:
            refuse_newer(store.tables.state.name, version)
            if str(version).strip() != str(SCHEMA_VERSION):  # older: its columns were added above
                conn.execute(
                    update(store.tables.meta)
                    .where(store.tables.meta.c.name == "schema_version")
                    .values(value=str(SCHEMA_VERSION), updated_at=now)
                )
                actions.append(f"schema version {str(version).strip()} -> {SCHEMA_VERSION}")
    return actions


def note_columns(store: StateStore, conn: Connection) -> None:
    """Note which optional columns the table lacks (another tool's table before
    init-db): `raw_column` reads them as NULL, so a dry run or validate works
    before init-db adds them. Writes still need them."""
    present = present_columns(store, conn)
    names = [column.name for column in store.tables.state.columns]
    store.absent_columns = frozenset(name for name in names if name.lower() not in present)


def add_missing_columns(store: StateStore, conn: Connection) -> list[str]:
    # A table made by another tool, or by an older pipestate, gets our
    # optional columns added; a missing core column is an error.
    state = store.tables.state
    preparer = conn.dialect.identifier_preparer
    table_name = preparer.format_table(state)
    present = present_columns(store, conn)
    missing_core = [name for name in CORE_COLUMNS if name not in present]
    if missing_core:
        raise SchemaError(
            f"table {state.name} lacks core column(s) {', '.join(missing_core)}; "
            "it is not a pipestate state table"
        )
    actions = []
    for _, name, _typ, _, _ in COLUMNS:
        if name in present:
            continue
        column_type = state.c[name].type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {table_name} ADD COLUMN {preparer.quote(name)} {column_type}")
        actions.append(f"added column {name}")
    return actions


def zone_less_instants(store: StateStore, conn: Connection, migrate: bool) -> list[str]:
    """PostgreSQL: instant columns of the state table typed `timestamp without
    time zone` (another tool's layout). Their values mean nothing without a
    zone; read in the session's zone they moved windows by hours and populate
    made windows overlapping COMPLETED ones. Refused, or converted to
    timestamptz reading the values as UTC (how pipestate stores naive UTC)."""
    if not store.backend.timezone_type:
        return []
    state = store.tables.state
    instants = [column.name for column in state.columns if isinstance(column.type, UTCDateTime)]
    found = conn.execute(
        text(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "coalesce(:schema, current_schema()) AND table_name = :table "
            "AND data_type = 'timestamp without time zone'"
        ),
        {"schema": state.schema, "table": state.name},
    ).scalars()
    zone_less = sorted(set(found) & set(instants), key=instants.index)
    if not zone_less:
        return []
    if not migrate:
        raise SchemaError(
            f"table {state.name}: {', '.join(zone_less)} are timestamp without time zone; "
            "pipestate needs timestamptz (run 'pipestate init-db --migrate-timestamps' to "
            "convert them, reading their values as UTC)"
        )
    preparer = conn.dialect.identifier_preparer
    table_name = preparer.format_table(state)
    for name in zone_less:
        column = preparer.quote(name)
        conn.exec_driver_sql(
            f"ALTER TABLE {table_name} ALTER COLUMN {column} TYPE timestamptz "
            f"USING {column} AT TIME ZONE 'UTC'"
        )
    return [f"converted {name} to timestamptz (values read as UTC)" for name in zone_less]
