"""Populate's plan from the database's reduction (store/spans.py `plan_rows`) equals
the plan from every row read into Python, on random messy tables: duplicates,
overlaps, mixed granularities, whole local days, DST days, unknown statuses,
invalid rows, fractions of a second and, on SQLite, instants as other tools write
them as text. On every backend, whichever path it takes by default."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import support
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, text

from pipestate.ops.populate import _plan
from pipestate.plans import Plan, contract_gaps
from pipestate.store import spans

ZONE = "America/New_York"
# 2026-03-08 is 23 hours long in New York, 2026-11-01 25 hours.
DAYS = (datetime(2026, 3, 7, 5, tzinfo=UTC), datetime(2026, 10, 31, 4, tzinfo=UTC))
LENGTHS = (15, 15, 15, 60, 60, 30, 120, 1440, 1380, 5, 0, -15)  # minutes; 0 and below: invalid
TEXT_FORMS = (None, None, None, "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ")

_row = st.tuples(
    st.integers(0, 1),  # which DST weekend
    st.integers(0, 4 * 24 * 3 - 1),  # quarter hours from its first day's start
    st.sampled_from(LENGTHS),
    st.sampled_from(["PENDING", "COMPLETED", "COMPLETED", "FAILED", "IN_PROGRESS", "SUPERSEDED", "ODD"]),
    st.integers(0, 5),  # updated_at, in hours after a fixed instant
    st.sampled_from(TEXT_FORMS),  # SQLite only: the start as another tool writes it
    st.booleans(),  # a fraction of a second on the end
)


def _summary(plan: Plan) -> dict:
    a = plan.analysis
    return {
        "active": a.active_windows,
        "first": a.first_start,
        "last": a.last_end,
        "distribution": dict(a.distribution),
        "by_day": {day: dict(counts) for day, counts in a.by_day.items()},
        "gaps": plan.gaps,
        "resolutions": [(r.kept.batch_id, r.superseded.batch_id, r.reason) for r in plan.resolutions],
        "invalid": sorted((r.batch_id, r.reason, r.active) for r in plan.invalid),
        "fills": plan.fills,
        "kept_dominant": plan.kept_dominant,
    }


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_row, min_size=0, max_size=40), duplicate=st.booleans())
def test_the_plan_from_the_database_equals_the_plan_from_every_row(manager_factory, backend, rows, duplicate):
    manager = manager_factory(timezone=ZONE, granularity="15m", start="2026-03-06", end="2026-11-03")
    manager.init_db()
    store = manager.store
    state = store.tables.state
    stamp = datetime(2026, 1, 1, tzinfo=UTC)
    values, rewrites = [], []
    for n, (weekend, quarter, minutes, status, updated, text_form, fraction) in enumerate(rows):
        start = DAYS[weekend] + timedelta(minutes=15 * quarter)
        end = start + timedelta(minutes=minutes, microseconds=250_000 if fraction else 0)
        row = support.external_row(
            f"r{n:02d}",
            start,
            end,
            status,
            updated_at=stamp + timedelta(hours=updated),
            minutes=max(minutes, 0),
        )
        values.append(row)
        if backend == "sqlite" and text_form is not None:
            rewrites.append((row["batch_id"], start.strftime(text_form)))
    if duplicate and values:  # the same window twice, under two ids
        values.append({**values[0], "batch_id": "r-dup"})
    try:
        if values:
            with store.engine.begin() as conn:
                conn.execute(insert(state), values)
                for batch_id, written in rewrites:  # text in a form SQLite's DateTime never writes
                    conn.execute(
                        text(
                            f'UPDATE "{state.name}" SET source_query_window_start_time = :v '
                            "WHERE batch_id = :b"
                        ),
                        {"v": written, "b": batch_id},
                    )
        ctx = manager.context
        with store.transaction(write=False) as conn:
            now = ctx.now(conn)
            in_python = _summary(_plan(ctx, conn, now, in_database=False))
            in_database = _summary(_plan(ctx, conn, now, in_database=True))
            default = _summary(_plan(ctx, conn, now))
            swept = spans.sweep(store, conn, ctx.pipeline)
        assert in_database == in_python
        assert default == in_python
        # status, the calendar and the report count the gaps populate fills
        assert contract_gaps(swept.gaps(), ctx.plan_settings(now)) == in_python["gaps"]
    finally:
        with store.engine.begin() as conn:
            conn.execute(delete(state))
        manager.close()  # one pool per example
