"""`pipestate mirror`: an exact, incremental copy of the state table and its events in Snowflake.

A function of the Context: the rows come through `store.mirror` (the state table's SQL), the
copy is written by `connectors.snowflake_mirror`. One mirror at a time per state table (an
advisory lock on PostgreSQL; the mark's compare-and-set everywhere). The mark read from
Snowflake says where to start; the source is read in one snapshot (the changed rows, and
with `verify` the digests, of the same instant); the copy and the new mark are committed
together; then the copy's digests are compared with the source's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..connectors.snowflake_mirror import MirrorMark, SnowflakeMirror
from ..errors import ConfigError, ConnectorError
from ..store import mirror as source_side
from .context import Context

__all__ = ["MirrorResult", "mirror", "mirror_target", "scope_of", "freshness"]

# How many times a mirror starts again when another one moved the mark under it.
_ATTEMPTS = 3
# How many differing keys a failed verify lists per kind.
_LISTED = 20


@dataclass
class MirrorResult:
    """What one mirror did (`as_json` is the command's JSON)."""

    pipeline: str
    scope: str
    target: str
    tables: dict[str, str]
    full: bool
    rows: int
    events: int
    mark: str | None
    previous_mark: str | None
    mirrored_at: datetime
    statements: int
    seconds: float
    actions: list[str] = field(default_factory=list)
    verify: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def equal(self) -> bool | None:
        return None if self.verify is None else bool(self.verify["equal"])

    def as_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "scope": self.scope,
            "mirror": self.target,
            "tables": self.tables,
            "full": self.full,
            "rows": self.rows,
            "events": self.events,
            "mark": self.mark,
            "previous_mark": self.previous_mark,
            "mirrored_at": self.mirrored_at.isoformat(),
            "statements": self.statements,
            "seconds": round(self.seconds, 3),
            "actions": self.actions,
            "verify": self.verify,
            "timings": {phase: round(seconds, 3) for phase, seconds in self.timings.items()},
        }


def scope_of(ctx: Context, all_pipelines: bool) -> tuple[str, str | None]:
    """The mark's scope name and the pipeline filter (None: every pipeline in the table)."""
    return ("*", None) if all_pipelines else (f"pipeline:{ctx.pipeline}", ctx.pipeline)


def mirror_target(ctx: Context) -> SnowflakeMirror:
    """The configured copy; ConfigError (exit 2) when `[mirror] url` is not set."""
    cfg = ctx.config.mirror
    if not cfg.url:
        raise ConfigError(
            "[mirror] url: required to mirror (snowflake://user:password@account/database/schema)"
        )
    return SnowflakeMirror(cfg.url, cfg.schema_ or None, cfg.table or ctx.config.state.table)


def mirror(
    ctx: Context, *, all_pipelines: bool = False, verify: bool = False, target: SnowflakeMirror | None = None
) -> MirrorResult:
    """Copy what changed since the last mirror of this scope (everything, the first time or
    after the source's columns changed) and, with `verify`, compare the copy with the source."""
    began = time.perf_counter()
    target = target or mirror_target(ctx)
    store = ctx.store
    store.check_ready()
    scope, pipeline = scope_of(ctx, all_pipelines)
    counted_from = target.statements.count
    with source_side.mirror_lock(store), target.connect() as cursor:
        for _ in range(_ATTEMPTS):
            expected = target.read_mark(cursor, scope)
            with store.transaction(write=False) as conn:
                snapshot = source_side.begin_snapshot(store, conn)
                source = source_side.columns_of(store, conn)
                signature = source.signature()
                since = expected.mark if expected is not None and expected.signature == signature else None
                full = not source_side.incremental(snapshot, since)
                read_began = time.perf_counter()
                state, events = source_side.read_changes(store, conn, source, pipeline, snapshot, since)
                timings = {"read": time.perf_counter() - read_began}
                read_began = time.perf_counter()
                digests = (
                    {
                        "state": source_side.digest(store, conn, store.tables.state, source.state, pipeline),
                        "events": source_side.digest(
                            store, conn, store.tables.events, source.events, pipeline
                        ),
                    }
                    if verify
                    else None
                )
                if verify:
                    timings["source_digest"] = time.perf_counter() - read_began
                now = ctx.now(conn)
            actions = []
            if expected is None or expected.signature != signature:
                actions = target.ensure_tables(cursor, source.state, source.events)
            new = MirrorMark(
                scope,
                snapshot.mark,
                (expected.seq if expected is not None else 0) + 1,
                signature,
                now,
                {"rows": state.num_rows, "events": events.num_rows, "full": full},
            )
            target.timings.clear()
            if target.write(
                cursor,
                scope_filter=pipeline,
                expected=expected,
                new=new,
                state=state,
                events=events,
                state_columns=source.state,
                event_columns=source.events,
                full=full,
            ):
                break
        else:
            raise ConnectorError(
                f"mirror: the mark of {scope} in {target.marks_table} moved under {_ATTEMPTS} attempts "
                "in a row (another mirror writing the same copy from elsewhere?)"
            )
        result = MirrorResult(
            pipeline=ctx.pipeline,
            scope=scope,
            target=target.display,
            tables={"state": target.state_table, "events": target.events_table, "marks": target.marks_table},
            full=full,
            rows=state.num_rows,
            events=events.num_rows,
            mark=snapshot.mark,
            previous_mark=None if expected is None else expected.mark,
            mirrored_at=now,
            statements=0,
            seconds=0.0,
            actions=actions,
            timings={**timings, **target.timings},
        )
        if digests is not None:
            compare_began = time.perf_counter()
            result.verify = _compare(ctx, target, cursor, source, pipeline, digests)
            result.timings["copy_digest"] = time.perf_counter() - compare_began
    result.statements = target.statements.count - counted_from
    source_side.record_mirror(
        store,
        scope,
        {"mark": snapshot.mark, "mirror": target.display, "rows": result.rows, "events": result.events},
    )
    result.seconds = time.perf_counter() - began
    return result


def _compare(
    ctx: Context,
    target: SnowflakeMirror,
    cursor: Any,
    source: source_side.MirrorSource,
    pipeline: str | None,
    digests: dict[str, tuple[int, int]],
) -> dict[str, Any]:
    """The copy's digests against the source's (of the snapshot the mirror copied); on a
    difference, which rows differ (a second, finer pass on both sides)."""
    report: dict[str, Any] = {"equal": True}
    store = ctx.store
    for name, table, columns, key in (
        ("state", target.state_table, source.state, "batch_id"),
        ("events", target.events_table, source.events, "event_id"),
    ):
        source_rows, source_sum = digests[name]
        copy_rows, copy_sum = target.digest(cursor, table, columns, pipeline)
        equal = (source_rows, source_sum) == (copy_rows, copy_sum)
        part: dict[str, Any] = {"source_rows": source_rows, "copy_rows": copy_rows, "equal": equal}
        if not equal:
            report["equal"] = False
            source_table = store.tables.state if name == "state" else store.tables.events
            with store.transaction(write=False) as conn:
                mine = source_side.row_hashes(store, conn, source_table, key, columns, pipeline)
            theirs = target.row_hashes(cursor, table, key, columns, pipeline)
            missing = sorted(set(mine) - set(theirs))
            extra = sorted(set(theirs) - set(mine))
            changed = sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k])
            part["missing"] = missing[:_LISTED]
            part["extra"] = extra[:_LISTED]
            part["different"] = changed[:_LISTED]
            part["counts"] = {"missing": len(missing), "extra": len(extra), "different": len(changed)}
        report[name] = part
    return report


def freshness(ctx: Context, conn: Any) -> list[dict[str, Any]]:
    """Each mirror of this pipeline's rows (its own scope and `*`): when it last ran and how
    many state rows were written since, from what the mirror noted in the meta table."""
    store = ctx.store
    found = []
    for scope, noted in sorted(source_side.recorded_mirrors(store, conn).items()):
        if scope not in ("*", f"pipeline:{ctx.pipeline}"):
            continue
        at = noted.get("at")
        if not isinstance(at, datetime):
            continue
        pipeline = None if scope == "*" else ctx.pipeline
        behind = source_side.rows_behind(store, conn, pipeline, noted.get("mark"), at)
        found.append({"scope": scope, "mirrored_at": at, "rows_behind": behind})
    return found
