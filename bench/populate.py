"""Benchmark populate on a state table of 1,000,000 15-minute windows.

    python bench/populate.py                      # SQLite (default)
    python bench/populate.py --duckdb --postgres  # also DuckDB and the local PostgreSQL
    python bench/populate.py --windows 100000     # a smaller table, for a quick look

For each database it measures, each in a fresh child process so one run's
memory does not pollute the next:
  (a) the first populate, creating every window (wall time),
  (b) a no-op populate over the full table, and the same as a dry run,
  (c) after 1% of the windows are deleted (20 whole days among them, the rest
      single windows), a dry run and the populate that writes them back,
  and the peak memory (ru_maxrss) of the child that ran each, then the
  targets of issue 22 met or missed.
The range is 1998-01-01 00:00 UTC plus exactly N x 15 minutes (N = 1,000,000
ends at 2026-07-09T16:00:00+00:00), with a fixed clock so nothing depends on today.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

START = datetime(1998, 1, 1, tzinfo=UTC)
STEP = timedelta(minutes=15)
DEFAULT_PG = os.environ.get("PIPESTATE_BENCH_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
# Issue 22's targets at 1,000,000 windows: seconds (and MB) per database.
TARGETS = {
    "sqlite": {"first": 8.0, "noop": 0.5, "dry": 0.5, "gaps_dry": 0.5, "gaps": 1.0, "rss": 100.0},
    "postgresql": {"first": 12.0, "noop": 1.0, "dry": 1.0, "gaps_dry": 1.0, "gaps": 2.0},
    "duckdb": {"first": 12.0, "noop": 1.0, "dry": 1.0, "gaps_dry": 1.0, "gaps": 2.0, "rss": 300.0},
}


def _config(url: str, table: str, windows: int) -> dict:
    end = START + windows * STEP
    return {
        "pipeline": {
            "name": "bench",
            "timezone": "UTC",
            "granularity": "15m",
            "start": START.isoformat(),
            "end": end.isoformat(),
            "lag": "0s",
        },
        "state": {"url": url, "table": table},
    }


def child(url: str, table: str, windows: int, dry_run: bool) -> None:
    """Run one populate in this process and print its figures as JSON."""
    from pipestate.config import Config
    from pipestate.manager import PipelineStateManager

    config = Config.from_dict(_config(url, table, windows), origin="bench")
    clock_now = START + windows * STEP + timedelta(days=1)
    manager = PipelineStateManager(config, clock=lambda: clock_now)
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    began = time.perf_counter()
    report = manager.populate_pipeline_batches(dry_run=dry_run)
    wall = time.perf_counter() - began
    manager.close()
    # ru_maxrss is in KiB on Linux: the high-water mark of this process alone.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_mb = usage.ru_maxrss / 1024
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    summary = report.summary()
    print(json.dumps({"wall": wall, "cpu": cpu, "rss_mb": rss_mb, **summary}))


def _measure(url: str, table: str, windows: int, dry_run: bool = False) -> dict:
    command = [sys.executable, __file__, "--child", url, "--table", table, "--windows", str(windows)]
    if dry_run:
        command.append("--dry-run")
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    process_wall = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"child failed ({url}):\n{done.stderr}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["process_wall"] = process_wall
    print(
        f"  populate {figures['wall']:.2f} s, CPU {figures['cpu']:.2f} s, "
        f"peak RSS {figures['rss_mb']:.1f} MB, created {figures['created']}",
        flush=True,
    )
    return figures


def _reset_postgres(url: str, table: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        for name in (table, f"{table}_events", f"{table}_meta"):
            conn.execute(text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
        conn.execute(text(f'DROP SEQUENCE IF EXISTS "{table}_events_seq"'))
    engine.dispose()


def bench(name: str, url: str, table: str, windows: int) -> dict:
    print(f"{name}: first populate of {windows:,} windows ...", flush=True)
    first = _measure(url, table, windows)
    if first["created"] != windows:
        sys.exit(f"{name}: expected {windows} created windows, got {first['created']}")
    print(f"{name}: no-op populate ...", flush=True)
    noop = _measure(url, table, windows)
    if noop["created"] or noop["superseded"] or noop["active_windows"] != windows:
        sys.exit(f"{name}: the second populate was not a no-op: {noop}")
    print(f"{name}: dry run ...", flush=True)
    dry = _measure(url, table, windows, dry_run=True)
    missing = _remove_one_percent(url, table, windows)
    print(f"{name}: {missing:,} windows removed (1%, 20 whole days among them): dry run ...", flush=True)
    gaps_dry = _measure(url, table, windows, dry_run=True)
    print(f"{name}: populate writing them ...", flush=True)
    gaps = _measure(url, table, windows)
    if gaps["created"] != missing:
        sys.exit(f"{name}: expected {missing} windows created in the gaps, got {gaps['created']}")
    return {"name": name, "first": first, "noop": noop, "dry": dry, "gaps_dry": gaps_dry, "gaps": gaps}


def _remove_one_percent(url: str, table: str, windows: int) -> int:
    """Delete 1% of the windows: 20 whole days (every 500th day) and single
    windows spread over the rest (every 123rd); returns how many."""
    from sqlalchemy import create_engine, delete

    from pipestate.config import Config
    from pipestate.store.schema import build_tables

    config = Config.from_dict(_config(url, table, windows), origin="bench")
    engine = create_engine(url)
    state = build_tables(table, dialect=engine.dialect.name).state
    per_day = int(timedelta(days=1) / STEP)
    starts = [
        START + n * STEP
        for n in range(windows)
        if ((n // per_day) % 500 == 250 and n // per_day < 20 * 500) or n % 123 == 61
    ]
    with engine.begin() as conn:
        for first in range(0, len(starts), 500):
            conn.execute(
                delete(state).where(
                    state.c.pipeline_name == config.pipeline.name,
                    state.c.source_query_window_start_time.in_(starts[first : first + 500]),
                )
            )
    engine.dispose()
    return len(starts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--table", default="bench_state", help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--windows", type=int, default=1_000_000, help="number of 15-minute windows")
    parser.add_argument("--no-sqlite", action="store_true", help="skip SQLite")
    parser.add_argument("--duckdb", action="store_true", help="also measure DuckDB (a temp file)")
    parser.add_argument("--postgres", action="store_true", help="also measure PostgreSQL")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help=f"PostgreSQL URL (default {DEFAULT_PG})")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.table, args.windows, args.dry_run)
        return

    end = START + args.windows * STEP
    print(f"range {START.isoformat()} .. {end.isoformat()}: {args.windows:,} x 15 min, UTC")
    results = []
    with tempfile.TemporaryDirectory(prefix="pipestate-bench-") as tmp:
        folder = Path(tmp)
        if not args.no_sqlite:
            results.append(bench("sqlite", f"sqlite:///{folder / 'bench.db'}", "bench_state", args.windows))
        if args.duckdb:
            url = f"duckdb:///{folder / 'bench.duckdb'}"
            results.append(bench("duckdb", url, "bench_state", args.windows))
        if args.postgres:
            _reset_postgres(args.pg_url, "bench_state")
            try:
                results.append(bench("postgresql", args.pg_url, "bench_state", args.windows))
            finally:
                _reset_postgres(args.pg_url, "bench_state")

    print()
    print(
        f"{'database':<11} {'measurement':<22} {'populate s':>10} {'CPU s':>7} "
        f"{'process s':>10} {'peak RSS MB':>12}"
    )
    for result in results:
        for key, label in (
            ("first", "first (create all)"),
            ("noop", "no-op"),
            ("dry", "no-op --dry-run"),
            ("gaps_dry", "1% missing --dry-run"),
            ("gaps", "1% missing, writing"),
        ):
            figures = result[key]
            print(
                f"{result['name']:<11} {label:<22} {figures['wall']:>10.2f} {figures['cpu']:>7.2f} "
                f"{figures['process_wall']:>10.2f} {figures['rss_mb']:>12.1f}"
            )
    if args.windows == 1_000_000:
        print()
        for result in results:
            for key, target in TARGETS[result["name"]].items():
                if key == "rss":
                    value, unit = max(result[k]["rss_mb"] for k in ("noop", "dry", "gaps_dry")), "MB"
                else:
                    value, unit = result[key]["wall"], "s"
                verdict = "ok" if value <= target else "MISSED"
                name = result["name"]
                print(f"{name:<11} target {key:<9} {value:8.2f} {unit} <= {target:g} {unit}: {verdict}")


if __name__ == "__main__":
    main()
