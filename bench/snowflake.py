"""A fleet of worker processes on the Snowflake harness, side by side with PostgreSQL.

    python bench/snowflake.py                                  # 4/20/50 workers, 20 ms, 2,000 windows
    python bench/snowflake.py --latency 0.2 --windows 300 --procs 4 20 50
    python bench/snowflake.py --no-reread                      # the other answer to the re-read question

Each worker process runs pipestate's own `Worker` (claim `--claim-batch` windows per
claim, complete each; transient store errors retried with jitter) until nothing is
claimable. "snowflake" is the harness of tests/snowsim.py: table locks held to commit,
20 waiters then 000625, `--latency` per statement, primary keys not enforced.
"postgresql" is the same local server with the same latency per statement and its own
row locks (pipestate's PostgreSQL path). Printed per row: windows/s over the run (first
claim to last completion), state-table statements per window (reads and writes of the
state table; heartbeats none: the lease outlasts the run), all statements per window,
000625 errors met, workers stopped, and the exactly-once check (every window COMPLETED,
one COMPLETED event each, CLAIMED events beyond one per window). Rounds of the two
databases interleave (`--repeat`). Tables are dropped afterwards.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import snowsim  # noqa: E402 - the harness lives with the tests

from pipestate.config import Config  # noqa: E402
from pipestate.manager import PipelineStateManager  # noqa: E402
from pipestate.run.worker import Worker  # noqa: E402

PG_URL = os.environ.get("PIPESTATE_BENCH_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")


def config(table: str, windows: int, claim_batch: int) -> Config:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return Config.from_dict(
        {
            "pipeline": {
                "name": "fleet",
                "granularity": "5m",
                "start": start.isoformat(),
                "end": (start + timedelta(minutes=5 * windows)).isoformat(),
            },
            "state": {"url": PG_URL, "table": table},
            "concurrency": {"lease": "30m", "claim_batch": claim_batch},
        }
    )


def work(db: str, table: str, args: dict[str, Any], ready: Any, go: Any, results: Any) -> None:
    harness = snowsim.Harness(args["latency"], reread=args["reread"], locks=db == "snowflake")
    manager = PipelineStateManager(
        config(table, args["windows"], args["claim_batch"]), engine=harness.engine(PG_URL)
    )
    logging.getLogger("pipestate").setLevel(logging.ERROR)  # a retried 000625 is expected here
    worker = Worker(manager, f"{db}-{os.getpid()}", store_retries=args["store_retries"], store_backoff=0.2)
    ready.release()
    go.wait()
    harness.counts.clear()
    stopped = ""
    started = time.perf_counter()
    summary: Any = None
    try:
        summary = worker.run(lambda batch: None)
    except Exception as err:  # a worker the fleet lost: counted, not hidden
        stopped = f"{type(err).__name__}: {err}"[:200]
    finished = time.perf_counter()
    results.put(
        {
            "started": started,
            "finished": finished,
            "completed": 0 if summary is None else summary.completed,
            "lost": 0 if summary is None else summary.lost,
            "counts": dict(harness.counts),
            "stopped": stopped,
        }
    )
    manager.close()


def prepare(db: str, table: str, args: dict[str, Any]) -> None:
    setup = snowsim.Harness(0.0, locks=db == "snowflake")
    manager = PipelineStateManager(config(table, args["windows"], 1), engine=setup.engine(PG_URL))
    manager.init_db()
    if db == "snowflake":
        snowsim.unenforce_keys(manager.store.engine, table)
    created = manager.populate_pipeline_batches().summary()["created"]
    assert created == args["windows"], created
    manager.close()


def check(table: str, windows: int) -> dict[str, int]:
    engine = create_engine(PG_URL)
    with engine.connect() as conn:
        completed = conn.execute(
            text(f"SELECT count(*) FROM \"{table}\" WHERE pipeline_status = 'COMPLETED'")
        ).scalar_one()
        events = dict(
            conn.execute(text(f'SELECT event_type, count(*) FROM "{table}_events" GROUP BY event_type')).all()
        )
        twice = conn.execute(
            text(
                f'SELECT count(*) FROM (SELECT batch_id FROM "{table}_events" '
                "WHERE event_type = 'COMPLETED' GROUP BY batch_id HAVING count(*) > 1) AS d"
            )
        ).scalar_one()
    engine.dispose()
    return {
        "not_completed": windows - int(completed),
        "completed_twice": int(twice),
        "extra_claims": int(events.get("CLAIMED", 0)) - windows,
    }


def drop(table: str) -> None:
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        for name in (table, f"{table}_events", f"{table}_meta"):
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}"')
    engine.dispose()


def one_round(db: str, procs: int, args: dict[str, Any]) -> dict[str, Any]:
    table = f"bench_fleet_{uuid.uuid4().hex[:8]}"
    try:
        prepare(db, table, args)
        ctx = multiprocessing.get_context("spawn")
        ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
        workers = [ctx.Process(target=work, args=(db, table, args, ready, go, results)) for _ in range(procs)]
        for process in workers:
            process.start()
        for _ in workers:
            ready.acquire()
        go.set()
        rows = [results.get(timeout=3600) for _ in workers]
        for process in workers:
            process.join()
        counts: Counter[str] = Counter()
        for row in rows:
            counts.update(row["counts"])
        wall = max(r["finished"] for r in rows) - min(r["started"] for r in rows)
        state = counts.get(f"table:{table}", 0)
        total = counts.get("statement", 0)
        windows = args["windows"]
        return {
            "db": db,
            "procs": procs,
            "windows_per_s": windows / wall,
            "state_per_window": state / windows,
            "all_per_window": total / windows,
            "queue_errors": counts.get("000625", 0),
            "stopped": sum(1 for r in rows if r["stopped"]),
            "why": sorted({r["stopped"] for r in rows if r["stopped"]})[:2],
            **check(table, windows),
        }
    finally:
        drop(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--procs", type=int, nargs="+", default=[4, 20, 50])
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--claim-batch", type=int, default=5)
    parser.add_argument("--no-reread", dest="reread", action="store_false")
    parser.add_argument("--db", nargs="+", default=["snowflake", "postgresql"])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--store-retries", type=int, default=8)
    options = parser.parse_args()
    args = vars(options)
    print(
        f"{options.windows} windows, {options.latency * 1000:.0f} ms/statement, claim_batch "
        f"{options.claim_batch}, re-read {'yes' if options.reread else 'no'}; load {os.getloadavg()[0]:.1f}"
    )
    header = f"{'db':<11}{'procs':>6}{'win/s':>8}{'state st/win':>13}{'all st/win':>11}"
    print(header + f"{'000625':>8}{'stopped':>8}{'missing':>8}{'twice':>6}{'extra claims':>13}")
    for _ in range(options.repeat):
        for procs in options.procs:
            for db in options.db:
                r = one_round(db, procs, args)
                print(
                    f"{r['db']:<11}{r['procs']:>6}{r['windows_per_s']:>8.1f}{r['state_per_window']:>13.2f}"
                    f"{r['all_per_window']:>11.2f}{r['queue_errors']:>8}{r['stopped']:>8}"
                    f"{r['not_completed']:>8}{r['completed_twice']:>6}{r['extra_claims']:>13}",
                    flush=True,
                )
                for why in r["why"]:
                    print(f"    stopped: {why}")


if __name__ == "__main__":
    main()
