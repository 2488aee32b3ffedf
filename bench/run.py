"""The data path side by side, in one run: pipestate's targets, dlt's Arrow path, DuckDB's read_json.

    python bench/run.py                          # the workload below, every mode
    python bench/run.py --events-per-hour 2000   # smaller, for a quick look
    python bench/run.py --modes duckdb,dlt       # some of the modes
    python bench/run.py --big-window 5000000     # also: one window of 5M records (memory)
    python bench/run.py --repeat 3 --modes duckdb,dlt   # 3 interleaved rounds and their medians
    python bench/run.py --workload nested        # list and nested fields, empty days, a DST change

Workloads (--workload): `flat` (the default) is 3 days x 20,000 events/hour, one NDJSON file
per UTC day, sorted by time, pipestate with hourly windows in America/New_York (1 worker, SQLite
state table, Parquet zstd stage on the local disk). `nested` is the same events with a list
field (`tags`) and a list inside the nested `context`, over seven New York days of which only
the three UTC days hold data (empty windows before and after, the DST change of 2026-03-08
inside). Each mode runs in its own process, one after the other, so each peak RSS is its own. Modes:

  duckdb, sqlite, postgresql   pipestate run: files -> Parquet stage -> that target, one window
                               per claim (`[concurrency] claim_batch = 1`), in-process
  <target>-runs                the same in runs of windows (`claim_batch`, --claim-batch): one
                               extract pass, one load transaction and one completion per run
  <target>-cmd, <target>-runs-cmd   the same through the `pipestate run` command (a new
                               process, populate included; its peak RSS from wait4)
  dlt                          dlt's Arrow path: a pyarrow table per file -> DuckDB
  read_json                    DuckDB's own read_json into a table (the limit)

Figures: records/s (records / wall time of populate + run), MB/s (source NDJSON bytes / wall),
peak RSS (of the run, taken before the count that checks it), and for pipestate the state-table
work per batch (claim, step records, complete: the time spent in those manager calls, divided by
the batches). Prints; asserts nothing.
PostgreSQL: PIPESTATE_BENCH_PG_URL (default the local postgresql+psycopg://root@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PG_URL = os.environ.get("PIPESTATE_BENCH_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
FIRST_DAY = datetime(2026, 3, 6, tzinfo=UTC)  # a Friday; the days span the US DST change of 2026-03-08
EVENTS = ["view", "click", "add_to_cart", "purchase", "refund"]
COUNTRIES = ["US", "CA", "GB", "FR", "DE", "JP", "BR", "IN"]
TARGETS = ["duckdb", "sqlite", "postgresql"]
ALL_MODES = [f"{t}{how}" for t in TARGETS for how in ("", "-runs", "-cmd", "-runs-cmd")] + [
    "dlt",
    "read_json",
]
DEFAULT_MODES = ["duckdb", "duckdb-runs", "duckdb-runs-cmd", "postgresql-runs", "dlt", "read_json"]
TAGS = ["new", "sale", "promo", "vip", "mobile", "returning"]


# -- the workload ------------------------------------------------------------------------------


def write_workload(
    folder: Path, days: int, per_hour: int, seed: int = 11, nested: bool = False
) -> tuple[int, int]:
    """One NDJSON file per UTC day, sorted by time; returns (events, bytes). `nested`: with a
    list field and a list inside the nested record."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    count = size = 0
    for day in range(days):
        start = FIRST_DAY + timedelta(days=day)
        moments = sorted(rng.randrange(86_400_000_000) for _ in range(24 * per_hour))
        lines = []
        for offset in moments:
            count += 1
            moment = start + timedelta(microseconds=offset)
            record = {
                "id": count,
                "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "user_id": rng.randrange(100_000),
                "event": rng.choice(EVENTS),
                "amount": round(rng.uniform(1, 500), 2),
                "country": rng.choice(COUNTRIES),
                "context": {"session": rng.randrange(1 << 30), "mobile": rng.random() < 0.4},
            }
            if nested:
                record["tags"] = rng.sample(TAGS, rng.randrange(4))
                record["context"]["pages"] = [rng.randrange(1000) for _ in range(rng.randrange(3))]
            lines.append(json.dumps(record, separators=(",", ":")))
        path = folder / f"events-{start.date().isoformat()}.ndjson"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        size += path.stat().st_size
    return count, size


def write_big_window(folder: Path, records: int) -> int:
    """`records` events inside one UTC hour, in one NDJSON file (written in blocks)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "big.ndjson"
    rng = random.Random(5)
    start = FIRST_DAY
    step = 3_600_000_000 / records
    with path.open("w", encoding="utf-8") as out:
        for first in range(0, records, 100_000):
            lines = []
            for n in range(first, min(first + 100_000, records)):
                moment = start + timedelta(microseconds=int(n * step))
                lines.append(
                    f'{{"id":{n + 1},"timestamp":"{moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}",'
                    f'"user_id":{rng.randrange(100_000)},"event":"{rng.choice(EVENTS)}",'
                    f'"amount":{rng.randrange(50_000) / 100}}}'
                )
            out.write("\n".join(lines) + "\n")
    return path.stat().st_size


# -- the modes (each in its own process) -------------------------------------------------------


def _config(
    base: Path, source: Path, target_url: str, table: str, start: str, end: str, claim_batch: int = 1
) -> Path:
    text = f'''
[pipeline]
name = "bench"
timezone = "America/New_York"
granularity = "1h"
start = "{start}"
end = "{end}"

[state]
url = "sqlite:///{base / "state.db"}"

[concurrency]
lease = "10m"
claim_batch = {claim_batch}

[source]
type = "files"
path = "{source}"
time_field = "timestamp"

[stage]
type = "local"
url = "{base / "stage"}"
format = "parquet"

[target]
type = "sql"
url = "{target_url}"
table = "{table}"
time_field = "timestamp"
'''
    path = base / "pipestate.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _state_timer() -> dict[str, float]:
    """Wraps the manager's per-batch state-table calls to add up the time spent in them."""
    from pipestate.manager import PipelineStateManager

    spent = {"seconds": 0.0, "calls": 0}
    for name in (
        "claim",
        "claim_batches",
        "record_step",
        "complete",
        "heartbeat",
        "record_steps",
        "complete_many",
    ):
        original = getattr(PipelineStateManager, name)

        def timed(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return _original(self, *args, **kwargs)
            finally:
                spent["seconds"] += time.perf_counter() - began
                spent["calls"] += 1

        setattr(PipelineStateManager, name, timed)
    return spent


def run_pipestate(
    mode: str, work: Path, source: Path, window: tuple[str, str], claim_batch: int
) -> dict[str, Any]:
    import sqlalchemy as sa

    target = mode.split("-")[0]
    runs, command = "-runs" in mode, mode.endswith("-cmd")
    base = _fresh(work / f"pipestate-{mode}")
    table = f"bench_{uuid.uuid4().hex[:8]}" if target == "postgresql" else "events"
    url = {
        "duckdb": f"duckdb:///{base / 'target.duckdb'}",
        "sqlite": f"sqlite:///{base / 'target.db'}",
        "postgresql": PG_URL,
    }[target]
    config = _config(base, source, url, table, *window, claim_batch=claim_batch if runs else 1)
    state: float | None = None
    if command:
        wall, peak, batches, failed = _run_command(config)
    else:
        from pipestate.manager import PipelineStateManager
        from pipestate.run.runner import run_pipeline

        spent = _state_timer()
        began = time.perf_counter()
        with PipelineStateManager(config) as manager:
            result = run_pipeline(manager)
        wall = time.perf_counter() - began
        peak = _peak_mb()  # before the check below, which is not part of the run
        batches, failed = result.summary.completed, result.summary.failed
        state = 1000 * spent["seconds"] / batches if batches else None
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            rows, distinct = conn.execute(
                sa.text(f'SELECT count(*), count(DISTINCT id) FROM "{table}"')
            ).one()
            if target == "postgresql":
                conn.execute(sa.text(f'DROP TABLE "{table}"'))
    finally:
        engine.dispose()
    return {
        "records": int(rows),
        "distinct": int(distinct),
        "wall": wall,
        "batches": batches,
        "failed": failed,
        "state_ms_per_batch": state,
        "peak_mb": peak,
    }


def _run_command(config: Path) -> tuple[float, float, int, int]:
    """`pipestate run --json` as a user runs it: (wall, its peak RSS in MB, completed, failed)."""
    command = [str(Path(sys.executable).with_name("pipestate")), "run", "--config", str(config), "--json"]
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # wait4 gives this child's own peak (the bench process around it holds little).
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - began
    out = process.stdout.read().decode() if process.stdout else ""
    err = process.stderr.read().decode() if process.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"pipestate run exited {code}: {(err or out).strip().splitlines()[-1:]}")
    report, _ = json.JSONDecoder().raw_decode(out[out.index("{") :])  # one object, on one line or several
    return wall, usage.ru_maxrss / 1024, int(report["completed"]), int(report["failed"])


def run_dlt(work: Path, source: Path) -> dict[str, Any]:
    import dlt
    import pyarrow.json as pa_json

    files = sorted(source.glob("*.ndjson"))

    @dlt.resource(name="events", write_disposition="append")
    def events() -> Any:
        for path in files:
            yield pa_json.read_json(path)

    base = _fresh(work / "dlt")
    os.environ["DLT_DATA_DIR"] = str(base / "data")
    os.environ["RUNTIME__LOG_LEVEL"] = "WARNING"
    database = base / "dlt.duckdb"
    began = time.perf_counter()
    pipeline = dlt.pipeline(
        pipeline_name="bench_dlt",
        destination=dlt.destinations.duckdb(str(database)),
        dataset_name="bench",
        pipelines_dir=str(base / "pipelines"),
    )
    pipeline.run(events())
    wall = time.perf_counter() - began
    peak = _peak_mb()
    import duckdb

    with duckdb.connect(str(database), read_only=True) as conn:
        rows, distinct = conn.execute("SELECT count(*), count(DISTINCT id) FROM bench.events").fetchone()  # type: ignore[misc]
    return {"records": rows, "distinct": distinct, "wall": wall, "peak_mb": peak}


def run_read_json(work: Path, source: Path) -> dict[str, Any]:
    import duckdb

    base = _fresh(work / "read_json")
    began = time.perf_counter()
    with duckdb.connect(str(base / "t.duckdb")) as conn:
        files = f"{source}/*.ndjson"
        conn.execute(
            f"CREATE TABLE events AS SELECT * FROM read_json('{files}', format = 'newline_delimited')"
        )
        peak = _peak_mb()
        rows, distinct = conn.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone()  # type: ignore[misc]
    wall = time.perf_counter() - began
    return {"records": rows, "distinct": distinct, "wall": wall, "peak_mb": peak}


def _fresh(folder: Path) -> Path:
    """An empty folder for a mode, so a --dir used before measures a first run again."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _peak_mb() -> float:
    """This process's peak RSS since it started its program. Not getrusage's ru_maxrss: Linux
    keeps that across exec, so a mode would report at least the parent's peak at the fork
    (the parent that just wrote the workload held 337 MB; every mode "peaked" there)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> int:
    work, source = Path(args.work), Path(args.source)
    if args.child.split("-")[0] in TARGETS:
        out = run_pipestate(args.child, work, source, (args.start, args.end), args.claim_batch)
    elif args.child == "dlt":
        out = run_dlt(work, source)
    else:
        out = run_read_json(work, source)
    print(json.dumps(out))
    return 0


# -- the parent: generate, run each mode, print --------------------------------------------------


def _run_child(
    mode: str, work: Path, source: Path, start: str, end: str, claim_batch: int = 1
) -> dict[str, Any] | str:
    command = [sys.executable, __file__, "--child", mode, "--work", str(work), "--source", str(source)]
    command += ["--start", start, "--end", end, "--claim-batch", str(claim_batch)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        return f"failed (exit {done.returncode}): {lines[-1]}"
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _print_table(title: str, results: dict[str, dict[str, Any] | str], events: int, size: int) -> None:
    print(title)
    print(f"  {'mode':<50} {'records/s':>11} {'MB/s':>7} {'peak RSS':>9} {'state/batch':>12}  rows")
    names = {mode: _name(mode) for mode in ALL_MODES if mode.split("-")[0] in TARGETS} | {
        "dlt": "dlt Arrow path: pyarrow table/file -> DuckDB",
        "read_json": "DuckDB read_json into a table (the limit)",
        "big": "pipestate run: ONE window (5M-record check)",
    }
    for mode, out in results.items():
        if isinstance(out, str):
            print(f"  {names[mode]:<50} {out}")
            continue
        wall = out["wall"]
        state = out.get("state_ms_per_batch")
        state_text = f"{state:.1f} ms" if state is not None else "-"
        exact = "exactly once" if out["records"] == out["distinct"] == events else "MISMATCH"
        print(
            f"  {names[mode]:<50} {out['records'] / wall:>11,.0f} {size / wall / 1e6:>7.1f} "
            f"{out['peak_mb']:>6.0f} MB {state_text:>12}  {out['records']:,} ({exact})"
        )
    for mode in results:
        ratio = _ratio(results, mode)
        if ratio is not None:
            print(f"  {mode} at {ratio:.2f}x dlt's Arrow path's records/s (target >= 1.0x)")


def _name(mode: str) -> str:
    target = {"duckdb": "DuckDB", "sqlite": "SQLite", "postgresql": "PostgreSQL"}[mode.split("-")[0]]
    how = ", runs" if "-runs" in mode else ", 1 window/claim"
    how += ", command" if mode.endswith("-cmd") else ""
    return f"pipestate: files -> Parquet -> {target}{how}"


def _ratio(results: dict[str, dict[str, Any] | str], mode: str = "duckdb") -> float | None:
    """A pipestate -> DuckDB mode's records/s over dlt's, where both ran."""
    if not mode.startswith("duckdb"):
        return None
    ours, theirs = results.get(mode), results.get("dlt")
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return (ours["records"] / ours["wall"]) / (theirs["records"] / theirs["wall"])  # type: ignore[no-any-return]
    return None


def _print_medians(rounds: list[dict[str, dict[str, Any] | str]], modes: list[str]) -> None:
    """Each mode's median records/s and its peaks over the rounds, and the DuckDB ratio's
    range: the machine's speed drifts between minutes, the rounds interleave the modes."""
    print()
    print(f"over {len(rounds)} rounds:")
    for mode in modes:
        runs = [r[mode] for r in rounds if isinstance(r[mode], dict)]
        if not runs:
            continue
        speeds = [run["records"] / run["wall"] for run in runs]
        peaks = sorted(run["peak_mb"] for run in runs)
        states = [run["state_ms_per_batch"] for run in runs if run.get("state_ms_per_batch") is not None]
        state = f"   state {statistics.median(states):.2f} ms/window" if states else ""
        print(
            f"  {mode:<20} median {statistics.median(speeds):>11,.0f} records/s   "
            f"peak RSS {peaks[0]:.0f}-{peaks[-1]:.0f} MB (median {statistics.median(peaks):.0f}){state}"
        )
    for mode in modes:
        ratios = [ratio for results in rounds if (ratio := _ratio(results, mode)) is not None]
        if ratios:
            print(
                f"  {mode} at {min(ratios):.2f}x-{max(ratios):.2f}x dlt's Arrow path "
                f"(median {statistics.median(ratios):.2f}x; target >= 1.0x)"
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--events-per-hour", type=int, default=20_000)
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"comma-separated, from {ALL_MODES}")
    parser.add_argument("--workload", choices=["flat", "nested"], default="flat")
    parser.add_argument("--claim-batch", type=int, default=24, help="windows per claim in the -runs modes")
    parser.add_argument("--big-window", type=int, default=0, help="also run one window of N records")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of every mode, interleaved; prints each and the medians"
    )
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--source", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--start", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--end", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := [m for m in modes if m not in ALL_MODES]:
        parser.error(f"--modes: unknown {unknown} (known: {ALL_MODES})")
    if "dlt" in modes:
        try:
            import dlt  # noqa: F401
        except ImportError:
            print("NOTE: dlt is not installed, so its Arrow path is not measured: pip install -e '.[bench]'")
            modes.remove("dlt")
    work = args.dir or Path(tempfile.mkdtemp(prefix="pipestate-bench-run-"))
    source = work / "source"
    began = time.perf_counter()
    nested = args.workload == "nested"
    marker = work / f"workload-{args.workload}-{args.days}-{args.events_per_hour}.json"
    if marker.exists():  # written by an earlier run in this --dir: the same files
        events, size = json.loads(marker.read_text())
    else:
        shutil.rmtree(source, ignore_errors=True)
        events, size = write_workload(source, args.days, args.events_per_hour, nested=nested)
        marker.write_text(json.dumps([events, size]))
    print(
        f"workload {args.workload}: {events:,} events, {args.days} NDJSON files (one per UTC day, sorted), "
        f"{size / 1e6:,.0f} MB, written in {time.perf_counter() - began:.0f} s under {work}"
    )
    # The New York days that hold the UTC days' events: hourly windows over exactly that span;
    # `nested` adds two empty days before and after.
    margin = 3 if nested else 1
    start = (FIRST_DAY - timedelta(days=margin)).date().isoformat()
    end = (FIRST_DAY + timedelta(days=args.days + margin)).date().isoformat()
    rounds: list[dict[str, dict[str, Any] | str]] = []
    for number in range(1, max(args.repeat, 1) + 1):
        results: dict[str, dict[str, Any] | str] = {}
        for mode in modes:
            results[mode] = _run_child(mode, work, source, start, end, args.claim_batch)
        rounds.append(results)
        print()
        title = "side by side (one run, this machine):"
        if args.repeat > 1:
            title = f"side by side, round {number} of {args.repeat} (this machine):"
        _print_table(title, results, events, size)
    if len(rounds) > 1:
        _print_medians(rounds, modes)
    if args.big_window:
        big = work / "big-source"
        size = write_big_window(big, args.big_window)
        # The first UTC hour of the workload is 19:00-20:00 in New York: one hourly window.
        outcome = _run_child("duckdb", work / "big", big, "2026-03-05T19:00:00", "2026-03-05T20:00:00")
        print()
        title = (
            f"one window of {args.big_window:,} records ({size / 1e6:,.0f} MB NDJSON; target: peak < 500 MB):"
        )
        _print_table(
            title,
            {"big": outcome},
            args.big_window,
            size,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
