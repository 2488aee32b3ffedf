"""End-to-end: `pipestate run` moves every record source -> stage -> target exactly once.

Source: local NDJSON files; stage: a local directory; target: SQLite or DuckDB
through the `sql` target. These are the embedded defaults, not stand-ins.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import run_support
import sqlalchemy as sa
import support

from pipestate.config import Config
from pipestate.manager import PipelineStateManager
from pipestate.run.runner import PipelineRunner, run_pipeline

PG_URL = support.PG_URL

HERE = Path(__file__).parent
PIPESTATE = str(Path(sys.executable).with_name("pipestate"))
START, END = "2026-01-01", "2026-01-02"


TARGETS = [
    "sqlite",
    pytest.param("duckdb", marks=pytest.mark.duckdb),
    pytest.param("postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(autouse=True, params=[1, 5], ids=["single", "runs"])
def claim_batch(request: pytest.FixtureRequest) -> Iterator[int]:
    """Every test here twice: one window per claim, and runs of up to 5 windows."""
    run_support.CLAIM_BATCH = request.param
    yield request.param
    run_support.CLAIM_BATCH = 1


@pytest.fixture
def pg_table() -> Iterator[str]:
    """A fresh PostgreSQL target table name, dropped afterwards."""
    name = support.unique_table()
    yield name
    engine = sa.create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))
    engine.dispose()


def _setup(
    tmp_path: Path, target: str = "sqlite", per_hour: int = 20, table: str = "events", **source: Any
) -> tuple[Config, int]:
    from datetime import UTC, datetime

    events = run_support.write_events(tmp_path / "source", datetime(2026, 1, 1, tzinfo=UTC), 24, per_hour)
    if target == "postgresql":
        if problem := support.pg_reachable(PG_URL):
            pytest.skip(problem)
        url = PG_URL
    elif target == "sqlite":
        url = f"sqlite:///{tmp_path / 'target.db'}"
    else:
        url = f"duckdb:///{tmp_path / 't.duckdb'}"
    data = run_support.config(tmp_path, START, END, target_url=url, table=table, **source)
    return Config.from_dict(data), events


def _assert_exactly_once(config: Config, events: int) -> None:
    table = config.target["table"]
    rows = run_support.target_rows(config.target["url"], config.state.url, table)
    ids = Counter(row[0] for row in rows)
    assert len(ids) == events, f"{events - len(ids)} events missing from the target"
    assert max(ids.values()) == 1, f"duplicated: {[i for i, n in ids.items() if n > 1][:5]}"
    outside = [row for row in rows if not row[3] <= row[2] < row[4]]
    assert not outside, f"events loaded into the wrong window: {outside[:3]}"


@pytest.mark.parametrize("target", TARGETS)
def test_run_loads_every_record_once_in_its_window(tmp_path: Path, target: str, pg_table: str) -> None:
    config, events = _setup(tmp_path, target, table=pg_table)
    with PipelineStateManager(config) as manager:
        result = run_pipeline(manager)
        assert result.created == 24
        assert result.summary.completed == 24
        counts = manager.counts()
        row = manager.status()
    assert counts == {"COMPLETED": 24}
    assert row["coverage"]["percent"] == 100.0
    _assert_exactly_once(config, events)


def test_step_columns_are_recorded(tmp_path: Path) -> None:
    config, _ = _setup(tmp_path)
    with PipelineStateManager(config) as manager:
        run_pipeline(manager, limit=1)
        state = manager.store.tables.state
        with manager.store.engine.connect() as conn:
            row = conn.execute(sa.select(state).where(state.c.pipeline_status == "COMPLETED")).one()._asdict()
    assert row["source_extract_status"] == row["stage_write_status"] == row["target_load_status"] == "DONE"
    assert row["source_record_count"] == row["stage_record_count"] == row["target_record_count"] == 20
    assert row["stage_location"].endswith(".parquet") and row["stage_bytes"] > 0
    assert (row["stage_file_format"], row["stage_file_count"]) == ("parquet", 1)
    assert (
        row["source_extract_started_at"] <= row["stage_write_completed_at"] <= row["target_load_completed_at"]
    )
    assert row["target_location"].endswith("#events")
    assert row["current_step"] == "done"


@pytest.mark.parametrize("target", TARGETS)
def test_injected_failures_retry_to_exactly_once(tmp_path: Path, target: str, pg_table: str) -> None:
    config, events = _setup(tmp_path, target, table=pg_table)
    with PipelineStateManager(config) as manager:
        failed = 0
        for attempt in range(30):
            result = run_pipeline(manager, inject_failures=0.3, seed=attempt)
            failed += result.summary.failed
            if manager.counts() == {"COMPLETED": 24}:
                break
        assert manager.counts() == {"COMPLETED": 24}
    assert failed > 0, "the seeds injected no failure: the test proves nothing"
    _assert_exactly_once(config, events)


def test_retry_after_staging_does_not_extract_again(tmp_path: Path) -> None:
    log = tmp_path / "extracts.log"
    config, events = _setup(tmp_path, type="run_support:SlowFilesSource", extract_log=str(log))

    from pipestate.run.worker import Worker

    with PipelineStateManager(config) as manager:
        manager.populate_pipeline_batches()
        runner = PipelineRunner(manager)
        load_run = runner.target.load_run  # type: ignore[attr-defined]
        failed: set[str] = set()

        def fail_each_once(items, stage):  # type: ignore[no-untyped-def]
            # Each batch's first load of its own fails (a run's load that fails is tried
            # again window by window: there each fails once).
            if any(batch.batch_id not in failed for batch, _ in items):
                if len(items) == 1:
                    failed.add(items[0][0].batch_id)
                raise RuntimeError("target unavailable")
            return load_run(items, stage)

        runner.target.load_run = fail_each_once  # type: ignore[attr-defined]
        runs = run_support.CLAIM_BATCH
        more = {"run_handler": runner.process_run, "claim_batch": runs} if runs > 1 else {}
        summary = Worker(manager, "w").run(runner.process, **more)  # type: ignore[arg-type]  # backoff is 0s
        assert (summary.failed, summary.completed) == (24, 24)
        assert manager.counts() == {"COMPLETED": 24}
    extracts = Counter(line.split()[0] for line in log.read_text().splitlines())
    assert len(extracts) == 24 and set(extracts.values()) == {1}, "a staged batch was extracted again"
    _assert_exactly_once(config, events)


def test_requeue_of_completed_batches_replaces_rows(tmp_path: Path) -> None:
    config, events = _setup(tmp_path)
    with PipelineStateManager(config) as manager:
        run_pipeline(manager)
        again = manager.requeue(statuses=("COMPLETED",), start=None, end=None)
        assert len(again) == 24
        run_pipeline(manager)
        state = manager.store.tables.state
        with manager.store.engine.connect() as conn:
            replaced = conn.execute(sa.select(sa.func.sum(state.c.target_rows_replaced))).scalar_one()
    assert replaced == events
    _assert_exactly_once(config, events)


def _add_late_record(config: Config, event_id: int, moment: str) -> None:
    source = Path(config.source["path"]) / "events.ndjson"
    with source.open("a", encoding="utf-8") as out:
        out.write(json.dumps({"id": event_id, "timestamp": moment}) + "\n")


@pytest.mark.parametrize("target", TARGETS)
def test_requeue_after_late_data_reads_the_source_again(tmp_path: Path, target: str, pg_table: str) -> None:
    config, events = _setup(tmp_path, target, table=pg_table)
    with PipelineStateManager(config) as manager:
        run_pipeline(manager)
        _add_late_record(config, events + 1, "2026-01-01T05:30:00+00:00")
        window = {"start": _utc("2026-01-01T05:00"), "end": _utc("2026-01-01T06:00")}
        (batch_id,) = manager.requeue(statuses=("COMPLETED",), **window)
        row = _state_row(manager, batch_id)
        assert (row["source_extract_status"], row["stage_write_status"]) == ("PENDING", "PENDING")
        assert json.loads(manager.history(batch_id)[-1]["details"]) == {"from_step": "source"}
        assert run_pipeline(manager).summary.completed == 1
        row = _state_row(manager, batch_id)
    assert row["source_record_count"] == row["target_record_count"] == 21
    _assert_exactly_once(config, events + 1)


def test_requeue_from_the_target_step_reloads_the_staged_file(tmp_path: Path) -> None:
    config, events = _setup(tmp_path)
    with PipelineStateManager(config) as manager:
        run_pipeline(manager)
        _add_late_record(config, events + 1, "2026-01-01T05:30:00+00:00")
        window = {"start": _utc("2026-01-01T05:00"), "end": _utc("2026-01-01T06:00")}
        (batch_id,) = manager.requeue(statuses=("COMPLETED",), from_step="target", **window)
        row = _state_row(manager, batch_id)
        assert (row["stage_write_status"], row["target_load_status"]) == ("DONE", "PENDING")
        assert json.loads(manager.history(batch_id)[-1]["details"]) == {"from_step": "target"}
        run_pipeline(manager)
        row = _state_row(manager, batch_id)
    assert row["target_record_count"] == row["target_rows_replaced"] == 20  # the staged file, as it was
    _assert_exactly_once(config, events)  # the late record is not loaded: it was not asked for


def _utc(text: str) -> Any:
    from datetime import UTC, datetime

    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _state_row(manager: PipelineStateManager, batch_id: str) -> dict[str, Any]:
    state = manager.store.tables.state
    with manager.store.engine.connect() as conn:
        return conn.execute(sa.select(state).where(state.c.batch_id == batch_id)).one()._asdict()


def _run_cli(config_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [PIPESTATE, "run", "--config", str(config_path), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("target", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_worker_killed_mid_batch_is_taken_over_exactly_once(
    tmp_path: Path, target: str, pg_table: str
) -> None:
    log = tmp_path / "extracts.log"
    config, events = _setup(
        tmp_path, target, table=pg_table, type="run_support:SlowFilesSource", extract_log=str(log), delay=0.5
    )
    config_path = tmp_path / "pipestate.toml"
    config_path.write_text(_toml(config), encoding="utf-8")
    victim = _run_cli(config_path, "--workers", "2")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 6):
        time.sleep(0.1)
    # Kill the whole run (parent and its worker processes) without a chance to clean up.
    subprocess.run(["pkill", "-KILL", "-P", str(victim.pid)], check=False)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    with PipelineStateManager(config) as manager:
        stuck = manager.counts().get("IN_PROGRESS", 0)
        assert stuck >= 1, "the kill landed between batches: nothing to take over"
        time.sleep(3.2)  # the lease
        rescue = _run_cli(config_path)
        out, err = rescue.communicate(timeout=180)
        assert rescue.returncode == 0, err
        assert manager.counts() == {"COMPLETED": 24}
        events_table = manager.store.tables.events
        with manager.store.engine.connect() as conn:
            expired = conn.execute(
                sa.select(sa.func.count()).where(events_table.c.event_type == "LEASE_EXPIRED")
            ).scalar_one()
    assert expired >= stuck, "the killed worker's batches were not taken over through lease expiry"
    _assert_exactly_once(config, events)


def _toml(config: Config) -> str:
    lines = []
    for section in ("pipeline", "state", "concurrency", "source", "stage", "target"):
        value = getattr(config, section)
        data = value if isinstance(value, dict) else value.model_dump(by_alias=True, exclude_none=True)
        lines.append(f"[{section}]")
        for key, item in data.items():
            if item == "" and key == "schema":
                continue
            lines.append(f"{key} = {_toml_value(item)}")
    return "\n".join(lines) + "\n"


def _toml_value(item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int | float):
        return str(item)
    if isinstance(item, dict):  # an inline table, e.g. [state] status_map
        pairs = (f"{_toml_value(key)} = {_toml_value(value)}" for key, value in item.items())
        return "{" + ", ".join(pairs) + "}"
    return '"' + str(item).replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.mark.duckdb
def test_two_worker_processes_share_one_duckdb_target_exactly_once(tmp_path: Path) -> None:
    # DuckDB lets one process at a time open the file for writing: each worker holds it for a
    # couple of seconds of loads, then lets go, and the other waits for its turn (a busy file
    # is a wait, not a failure). Every record still lands once, in its window.
    config, events = _setup(tmp_path, "duckdb")
    with PipelineStateManager(config) as manager:
        result = run_pipeline(manager, workers=2)
        counts = manager.counts()
    assert result.summary.failed == 0 and counts == {"COMPLETED": 24}
    state = sa.create_engine(config.state.url)
    with state.connect() as conn:
        workers = {row[0] for row in conn.execute(sa.text("SELECT DISTINCT worker_id FROM pipeline_state"))}
    state.dispose()
    names = {worker.rsplit("/", 1)[-1] for worker in workers}
    if run_support.CLAIM_BATCH == 1:
        assert names == {"w1", "w2"}, workers
    else:  # a run takes 5 windows: on a busy machine one worker may take every run first
        assert names and names <= {"w1", "w2"}, workers
    _assert_exactly_once(config, events)
