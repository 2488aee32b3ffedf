"""`pipestate mirror` from the local PostgreSQL into fakesnow (a local Snowflake stand-in).

    python -u bench/mirror.py                      # 1,000,000 state rows, a run of 1,000 windows
    python -u bench/mirror.py --rows 100000 --run 1000 --repeat 3 [--run-by api]

Prints, for the issue's targets:
- the first mirror of ROWS state rows (and populate's ROWS CREATED events): seconds and the
  number of statements sent to Snowflake (target: a handful, <= 60 s);
- an incremental mirror after a run of RUN windows (by default the rows and events such a run
  writes, made by SQL in one transaction; `--run-by api` claims and completes each): seconds and
  statements (target: <= 5 statements, <= 2 s);
- `mirror --verify` on the ROWS rows (an incremental mirror with nothing new, then one
  aggregate query per table per side): seconds, statements, and the digest queries' seconds
  on each side (target: <= 10 s).
`--repeat N` runs the incremental and verify rounds N times, interleaved, and prints medians.
PostgreSQL: $PIPESTATE_BENCH_PG_URL or the local server; its tables are dropped afterwards.
fakesnow runs in this process (DuckDB in memory), so its time counts in the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine, text

from pipestate.config import Config
from pipestate.manager import PipelineStateManager
from pipestate.ops.mirror import mirror, mirror_target
from pipestate.store import mirror as source_side

PG_URL = os.environ.get("PIPESTATE_BENCH_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")


def config(table: str, rows: int) -> Config:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    return Config.from_dict(
        {
            "pipeline": {
                "name": "bench",
                "granularity": "1m",
                "start": start.isoformat(),
                "end": (start + timedelta(minutes=rows)).isoformat(),
            },
            "state": {"url": PG_URL, "table": table},
            "mirror": {"url": "snowflake://bench:secret@fakesnow/analytics/raw"},
        }
    )


def run_windows(manager: PipelineStateManager, count: int, by: str) -> float:
    """What a run of `count` windows leaves in the state table: through the API (claim and
    complete each, as workers do: slow on a loaded machine), or by SQL in one transaction
    (the same rows changed, two events each: CLAIMED and COMPLETED)."""
    began = time.perf_counter()
    if by == "api":
        for _ in range(count):
            batch = manager.claim("bench")
            if batch is None:
                break
            manager.complete(batch.batch_id, "bench", values={"source_record_count": 10})
        return time.perf_counter() - began
    state, events = manager.store.tables.state.name, manager.store.tables.events.name
    with manager.store.engine.begin() as conn:
        ids = (
            conn.execute(
                text(
                    f"SELECT batch_id FROM {state} WHERE pipeline_status = 'PENDING' "
                    "ORDER BY source_query_window_start_time LIMIT :n"
                ),
                {"n": count},
            )
            .scalars()
            .all()
        )
        conn.execute(
            text(
                f"UPDATE {state} SET pipeline_status = 'COMPLETED', current_step = 'done', "
                "worker_id = 'bench', claim_token = md5(batch_id), attempt_count = 1, "
                "source_record_count = 10, stage_record_count = 10, target_record_count = 10, "
                "first_started_at = now(), claimed_at = now(), completed_at = now(), updated_at = now(), "
                "processing_seconds = 0.25 WHERE batch_id = ANY(:ids)"
            ),
            {"ids": list(ids)},
        )
        for kind, old, new in (
            ("CLAIMED", "PENDING", "IN_PROGRESS"),
            ("COMPLETED", "IN_PROGRESS", "COMPLETED"),
        ):
            conn.execute(
                text(
                    f"INSERT INTO {events} (batch_id, pipeline_name, event_type, worker_id, event_time, "
                    "old_status, new_status) SELECT b, 'bench', :kind, 'bench', now(), :old, :new "
                    "FROM unnest(CAST(:ids AS text[])) AS b"
                ),
                {"ids": list(ids), "kind": kind, "old": old, "new": new},
            )
    return time.perf_counter() - began


def digest_seconds(manager: PipelineStateManager) -> tuple[float, float]:
    """One aggregate query per table, each side, timed apart from the mirror."""
    store = manager.store
    began = time.perf_counter()
    with store.transaction(write=False) as conn:
        source = source_side.columns_of(store, conn)
        for table, columns in ((store.tables.state, source.state), (store.tables.events, source.events)):
            source_side.digest(store, conn, table, columns, "bench")
    source_seconds = time.perf_counter() - began
    target = mirror_target(manager.context)
    began = time.perf_counter()
    with target.connect() as cursor:
        target.digest(cursor, target.state_table, source.state, "bench")
        target.digest(cursor, target.events_table, source.events, "bench")
    return source_seconds, time.perf_counter() - began


def phases(result: Any) -> str:
    return "(" + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()) + ")"


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--run", type=int, default=1_000, help="windows completed before each incremental")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of run + mirror + verify")
    parser.add_argument(
        "--run-by", choices=("sql", "api"), default="sql", help="how the run's writes are made"
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # fakesnow's own (an Arrow copy, DuckDB's timestamp casts)
    import logging

    logging.getLogger("sqlglot").setLevel(logging.ERROR)
    import fakesnow

    table = f"bench_mirror_{uuid.uuid4().hex[:8]}"
    manager = PipelineStateManager(config(table, args.rows))
    try:
        began = time.perf_counter()
        manager.populate_pipeline_batches()
        print(f"populate: {args.rows:,} windows in {time.perf_counter() - began:.1f}s (not a mirror figure)")
        print(f"load average before: {load()}")
        with fakesnow.patch():
            first = mirror(manager.context)
            print(
                f"first mirror: {first.rows:,} state rows + {first.events:,} events, "
                f"{first.statements} statements, {first.seconds:.1f}s {phases(first)}"
            )
            rounds: dict[str, list[float]] = {k: [] for k in ("run_s", "inc_s", "inc_n", "ver_s", "ver_n")}
            sides: list[tuple[float, float]] = []
            for n in range(args.repeat):
                rounds["run_s"].append(run_windows(manager, args.run, args.run_by))
                incremental = mirror(manager.context)
                rounds["inc_s"].append(incremental.seconds)
                rounds["inc_n"].append(incremental.statements)
                verified = mirror(manager.context, verify=True)
                assert verified.verify is not None and verified.verify["equal"], verified.verify
                rounds["ver_s"].append(verified.seconds)
                rounds["ver_n"].append(verified.statements)
                sides.append(digest_seconds(manager))
                print(
                    f"round {n + 1}: run of {args.run} windows {rounds['run_s'][-1]:.1f}s; "
                    f"incremental mirror {incremental.rows} rows + {incremental.events} events, "
                    f"{incremental.statements} statements, {incremental.seconds:.2f}s {phases(incremental)}; "
                    f"mirror --verify {verified.statements} statements, {verified.seconds:.2f}s "
                    f"{phases(verified)} "
                    f"(digests: PostgreSQL {sides[-1][0]:.2f}s, fakesnow {sides[-1][1]:.2f}s)"
                )
            med: dict[str, Any] = {k: statistics.median(v) for k, v in rounds.items()}
            print(
                f"median of {args.repeat}: incremental {med['inc_n']:.0f} statements {med['inc_s']:.2f}s; "
                f"verify {med['ver_n']:.0f} statements {med['ver_s']:.2f}s; digests PostgreSQL "
                f"{statistics.median(s[0] for s in sides):.2f}s, "
                f"fakesnow {statistics.median(s[1] for s in sides):.2f}s"
            )
        print(f"load average after: {load()}")
    finally:
        manager.close()
        engine = create_engine(PG_URL)
        with engine.begin() as conn:
            for suffix in ("", "_events", "_meta"):
                conn.execute(text(f'DROP TABLE IF EXISTS "{table}{suffix}"'))
        engine.dispose()


if __name__ == "__main__":
    main()
