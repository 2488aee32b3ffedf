"""Benchmark the observing commands on the bench/populate.py table (1,000,000 windows).

    python bench/observe.py                    # SQLite (default)
    python bench/observe.py --postgres         # also the local PostgreSQL
    python bench/observe.py --windows 100000   # a smaller table, for a quick look

Builds the table of bench/populate.py (15-minute windows from 1998-01-01 UTC,
local days in America/New_York),
then gives it the mix of states a real pipeline has: all but the last week
COMPLETED, a window FAILED for good, one IN_PROGRESS, the rest PENDING. Each
command then runs as a user runs it, in a fresh `pipestate` process, side by
side with its peer: `status --no-calendar` (status as it was before the
calendar) against `status` and `status --json` (with the per-day calendar).
It also times `report --html` and the page it writes in headless Chromium
(the page's own time to ready, from performance.now(), and the whole browser
run), `metrics` and `windows --date`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from populate import DEFAULT_PG, START, STEP, _config, _reset_postgres  # noqa: E402

PIPESTATE = str(Path(sys.executable).with_name("pipestate"))
ZONE = "America/New_York"  # local days of 23 and 25 hours, as issue 22 measures


def _toml(config: dict) -> str:
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f'{key} = "{value}"' for key, value in values.items()]
    return "\n".join(lines) + "\n"


def build(url: str, table: str, windows: int, folder: Path) -> Path:
    """The populated table, its states mixed; returns the config file."""
    from sqlalchemy import update

    from pipestate.config import Config
    from pipestate.manager import PipelineStateManager

    config = _config(url, table, windows)
    config["pipeline"]["timezone"] = ZONE
    path = folder / f"{table}.toml"
    path.write_text(_toml(config), encoding="utf-8")
    end = START + windows * STEP
    manager = PipelineStateManager(Config.from_dict(config), clock=lambda: end + timedelta(days=1))
    began = time.perf_counter()
    manager.populate_pipeline_batches()
    state = manager.store.tables.state
    c = state.c
    done_until = end - timedelta(days=7)
    with manager.store.engine.begin() as conn:
        conn.execute(
            update(state)
            .where(c.pipeline_name == "bench", c.source_query_window_start_time < done_until)
            .values(pipeline_status="COMPLETED", source_record_count=900, processing_seconds=1.5)
        )
        failed = done_until - timedelta(days=30)
        conn.execute(
            update(state)
            .where(c.pipeline_name == "bench", c.source_query_window_start_time == failed)
            .values(pipeline_status="FAILED", retry_count=3, last_error="HTTP 503 from the source")
        )
        conn.execute(
            update(state)
            .where(c.pipeline_name == "bench", c.source_query_window_start_time == done_until)
            .values(pipeline_status="IN_PROGRESS", worker_id="bench-worker", lease_expires_at=end)
        )
    if manager.store.dialect == "postgresql":
        # a million rows just updated: measure the steady state autovacuum keeps, not the bloat
        with manager.store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f'VACUUM ANALYZE "{table}"')
    manager.close()
    print(f"  built {windows:,} windows in {time.perf_counter() - began:.1f} s", flush=True)
    return path


def _run(args: list[str]) -> tuple[float, str, float, float]:
    """One run: wall time, stdout, the process's CPU time (user + system, as
    /usr/bin/time counts it) and its peak RSS in MB, from wait4."""
    began = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(args, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - began
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            sys.exit(f"{' '.join(args)} failed:\n{err.read().decode()}")
        text = out.read().decode()
    return elapsed, text, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _time(args: list[str], repeat: int) -> tuple[float, str, float, float]:
    """The run of `repeat` with the least CPU time: wall, output, CPU, peak RSS MB
    (CPU says more than the wall time on a shared machine)."""
    runs = [_run(args) for _ in range(repeat)]
    return min(runs, key=lambda run: run[2])


def _chromium() -> str | None:
    return next((found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None)


def measure(name: str, config: Path, folder: Path, repeat: int) -> list[tuple[str, str, str]]:
    rows = []
    base = [PIPESTATE, "--config", str(config)]
    for label, extra in (
        ("status --json --no-calendar", ["status", "--json", "--no-calendar"]),
        ("status", ["status"]),
        ("status --json", ["status", "--json"]),
        ("metrics", ["metrics"]),
        ("windows --date", ["windows", "--date", "2020-02-29"]),
    ):
        seconds, _, cpu, rss = _time(base + extra, repeat)
        rows.append((name, label, f"{seconds:.2f} s (CPU {cpu:.2f} s, {rss:.0f} MB)"))
        print(f"  {label:<22} {seconds:6.2f} s (CPU {cpu:.2f} s, {rss:.0f} MB)", flush=True)
    page = folder / f"{name}.html"
    seconds, _, cpu, rss = _time(base + ["report", "--html", str(page)], repeat)
    size = page.stat().st_size / 1e6
    figure = f"{seconds:.2f} s (CPU {cpu:.2f} s, {rss:.0f} MB), page {size:.2f} MB"
    rows.append((name, "report --html", figure))
    print(f"  {'report --html':<22} {figure}", flush=True)
    chromium = _chromium()
    if chromium is None:
        rows.append((name, "page in Chromium", "no Chromium installed"))
        return rows
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()]
    seconds, dom, _, _ = _time(command, repeat)
    ready = re.search(r'data-ready-ms="(\d+)"', dom)
    figure = (
        f"ready after {int(ready.group(1)) / 1000:.2f} s; browser run {seconds:.2f} s"
        if ready
        else "not ready"
    )
    rows.append((name, "page in Chromium", figure))
    print(f"  {'page in Chromium':<22} {figure}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--windows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per command; the best is shown")
    parser.add_argument("--postgres", action="store_true", help="also the local PostgreSQL")
    parser.add_argument("--duckdb", action="store_true", help="also DuckDB (a temporary file)")
    parser.add_argument("--pg-url", default=DEFAULT_PG)
    args = parser.parse_args()
    os.environ.pop("NO_COLOR", None)
    results = []
    with tempfile.TemporaryDirectory(prefix="observe-bench-") as tmp:
        folder = Path(tmp)
        print(f"sqlite: {args.windows:,} windows", flush=True)
        config = build(f"sqlite:///{folder / 'bench.db'}", "bench_state", args.windows, folder)
        results += measure("sqlite", config, folder, args.repeat)
        if args.duckdb:
            print(f"duckdb: {args.windows:,} windows", flush=True)
            config = build(f"duckdb:///{folder / 'bench.duckdb'}", "bench_state", args.windows, folder)
            results += measure("duckdb", config, folder, args.repeat)
        if args.postgres:
            print(f"postgresql: {args.windows:,} windows", flush=True)
            _reset_postgres(args.pg_url, "bench_observe")
            try:
                config = build(args.pg_url, "bench_observe", args.windows, folder)
                results += measure("postgresql", config, folder, args.repeat)
            finally:
                _reset_postgres(args.pg_url, "bench_observe")
    print()
    load = os.getloadavg()[0]
    print(
        f"{'database':<11} {'command':<22} least CPU of {args.repeat}: wall (CPU, peak RSS), "
        f"fresh process; load {load:.1f}"
    )
    for database, label, figure in results:
        print(f"{database:<11} {label:<22} {figure}")


if __name__ == "__main__":
    main()
