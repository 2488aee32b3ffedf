"""Claim + complete cycles per second through the Python API, with N worker processes.

    python bench/claims.py                       # PostgreSQL and SQLite, 1/4/8 processes
    python bench/claims.py --db postgresql --procs 4 --batches 6000

Each process loops `claim()` then `complete()` on its own PipelineStateManager
until nothing is claimable; the table holds `--batches` PENDING windows made by
populate. Reports cycles/s over the whole run (first claim to last complete)
and the p50/p99 latency of one cycle. PostgreSQL: $PIPESTATE_BENCH_PG_URL or
the local server; the bench's tables are dropped afterwards.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from pipestate.config import Config
from pipestate.manager import PipelineStateManager

PG_URL = os.environ.get("PIPESTATE_BENCH_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")


def config(url: str, table: str, batches: int) -> Config:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(minutes=5 * batches)
    return Config.from_dict(
        {
            "pipeline": {
                "name": "bench",
                "granularity": "5m",
                "start": start.isoformat(),
                "end": end.isoformat(),
            },
            "state": {"url": url, "table": table},
            "concurrency": {"lease": "10m"},
        }
    )


def worker(url: str, table: str, batches: int, go: Any, results: Any) -> None:
    manager = PipelineStateManager(config(url, table, batches))
    me = f"bench-{os.getpid()}"
    # Warm up the connection pool and SQLAlchemy's statement cache off the clock.
    with manager.store.transaction(write=False) as conn:
        manager.now(conn)
    go.wait()
    latencies: list[float] = []
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        batch = manager.claim(me)
        if batch is None:
            break
        manager.complete(batch.batch_id, me, batch.claim_token)
        latencies.append(time.perf_counter() - t0)
    results.put((started, time.perf_counter(), latencies))
    manager.close()


def run(url: str, procs: int, batches: int) -> dict[str, float]:
    table = f"bench_{uuid.uuid4().hex[:8]}"
    setup = PipelineStateManager(config(url, table, batches))
    setup.populate_pipeline_batches()
    if url.startswith("postgresql"):
        # What autovacuum does soon after a big populate; a never-analysed table
        # makes PostgreSQL sort every PENDING row per claim instead of walking the index.
        with setup.store.engine.begin() as conn:
            conn.execute(text(f'ANALYZE "{table}"'))
    context = multiprocessing.get_context("spawn")
    go, results = context.Event(), context.Queue()
    workers = [context.Process(target=worker, args=(url, table, batches, go, results)) for _ in range(procs)]
    for process in workers:
        process.start()
    time.sleep(1.0 + 0.5 * procs)  # let every process import and connect
    go.set()
    outcomes = [results.get(timeout=600) for _ in workers]
    for process in workers:
        process.join()
    begin = min(o[0] for o in outcomes)
    finish = max(o[1] for o in outcomes)
    latencies = sorted(x for o in outcomes for x in o[2])
    done = len(latencies)
    setup.close()
    drop(url, table)
    return {
        "cycles": done,
        "per_second": done / (finish - begin),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(done - 1, int(done * 0.99))],
    }


def drop(url: str, table: str) -> None:
    if not url.startswith("postgresql"):
        return
    engine = create_engine(url)
    with engine.begin() as conn:
        for name in (table, f"{table}_events", f"{table}_meta"):
            conn.execute(text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
        conn.execute(text(f'DROP SEQUENCE IF EXISTS "{table}_events_seq"'))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["postgresql", "sqlite"], action="append")
    parser.add_argument("--procs", type=int, action="append")
    parser.add_argument("--batches", type=int, default=4000, help="windows per run (default 4000)")
    args = parser.parse_args()
    databases = args.db or ["postgresql", "sqlite"]
    counts = args.procs or [1, 4, 8]
    python = sys.version.split()[0]
    print(f"claim+complete cycles, {args.batches} batches per run, {os.cpu_count()} CPUs, Python {python}")
    print(f"{'database':<11} {'procs':>5} {'cycles':>7} {'cycles/s':>9} {'p50 ms':>7} {'p99 ms':>7}")
    with tempfile.TemporaryDirectory() as folder:
        for database in databases:
            for procs in counts:
                url = f"sqlite:///{Path(folder) / f'bench-{procs}.db'}" if database == "sqlite" else PG_URL
                r = run(url, procs, args.batches)
                print(
                    f"{database:<11} {procs:>5} {r['cycles']:>7} {r['per_second']:>9.0f} "
                    f"{r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
