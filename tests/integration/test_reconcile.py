"""`pipestate reconcile` finds a planted loss, a duplicate, a re-tagged and a stray row on every
target, and passes a clean run (issue 20, point 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import run_support
import sqlalchemy as sa
import support

from pipestate.config import Config
from pipestate.manager import PipelineStateManager
from pipestate.run.runner import run_pipeline

# fakesnow builds DB-API results through DuckDB's Arrow export, which warns about the copy.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Arrow output on a DB-API result makes an extra copy:UserWarning"
)
PIPESTATE = str(Path(sys.executable).with_name("pipestate"))
START, END = "2026-01-01", "2026-01-01T08:00:00+00:00"
TARGETS = [
    "sqlite",
    pytest.param("duckdb", marks=pytest.mark.duckdb),
    pytest.param("postgresql", marks=pytest.mark.postgres),
    "snowflake",
]
SNOWFLAKE = {"type": "snowflake", "account": "acme", "user": "u", "password": "p"}
SNOWFLAKE_DB = {"database": "analytics", "schema": "raw", "internal_stage": "@analytics.raw.pipestate_load"}


@pytest.fixture
def fakesnow_db() -> Iterator[None]:
    fakesnow = pytest.importorskip("fakesnow")
    snowflake = pytest.importorskip("snowflake.connector")
    with fakesnow.patch():
        with snowflake.connect(database="analytics", schema="raw") as conn:
            conn.cursor().execute("CREATE DATABASE IF NOT EXISTS analytics")
            conn.cursor().execute("CREATE SCHEMA IF NOT EXISTS analytics.raw")
            conn.cursor().execute("CREATE STAGE IF NOT EXISTS analytics.raw.pipestate_load")
        yield


def setup(
    tmp_path: Path, target: str, request: pytest.FixtureRequest
) -> tuple[Config, Callable[[str], None]]:
    """A run of 8 hourly windows loaded into `target`; returns the config and a function that
    runs one SQL statement on the target table (named `{T}` in it)."""
    run_support.write_events(tmp_path / "source", datetime(2026, 1, 1, tzinfo=UTC), 8, 5)
    table = support.unique_table()
    if target == "snowflake":
        request.getfixturevalue("fakesnow_db")
        import snowflake.connector

        def execute(sql: str) -> None:
            with snowflake.connector.connect(database="analytics", schema="raw") as conn:
                conn.cursor().execute(sql.replace("{T}", f"analytics.raw.{table}"))

        data = run_support.config(tmp_path, START, END, target_url="sqlite://", table=table)
        data["target"] = {**SNOWFLAKE, **SNOWFLAKE_DB, "table": table, "time_field": "timestamp"}
        return Config.from_dict(data), execute
    if target == "postgresql":
        if problem := support.pg_reachable(support.PG_URL):
            pytest.skip(problem)
        url = support.PG_URL
        request.addfinalizer(lambda: _drop(url, table))
    elif target == "sqlite":
        url = f"sqlite:///{tmp_path / 'target.db'}"
    else:
        url = f"duckdb:///{tmp_path / 't.duckdb'}"

    def run_sql(sql: str) -> None:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(sql.replace("{T}", f'"{table}"'))
        engine.dispose()

    return Config.from_dict(run_support.config(tmp_path, START, END, target_url=url, table=table)), run_sql


def _drop(url: str, table: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{table}"')
    engine.dispose()


def toml(config: Config) -> str:
    lines = []
    for section in ("pipeline", "state", "concurrency", "source", "stage", "target"):
        value = getattr(config, section)
        data = value if isinstance(value, dict) else value.model_dump(by_alias=True, exclude_none=True)
        lines.append(f"[{section}]")
        for key, item in data.items():
            if isinstance(item, str | int | float) and not isinstance(item, bool) and item != "":
                text = str(item) if isinstance(item, int | float) else json.dumps(item)
                lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def batch(hour: int) -> str:
    return f"events-20260101T{hour:02d}0000Z-20260101T{hour + 1:02d}0000Z"


def first_id(hour: int) -> int:
    return hour * 5 + 1  # run_support numbers events 1.. in hour order, 5 an hour


@pytest.mark.parametrize("target", TARGETS)
def test_reconcile_finds_every_planted_fault(
    tmp_path: Path, target: str, request: pytest.FixtureRequest
) -> None:
    config, execute = setup(tmp_path, target, request)
    with PipelineStateManager(config) as manager:
        assert run_pipeline(manager).summary.completed == 8
        clean = manager.reconcile()
        assert clean.ok, clean.findings
        assert (clean.completed, clean.target_rows) == (8, 40)
        execute(f"DELETE FROM {{T}} WHERE id = {first_id(1)}")  # a loss
        execute(f"INSERT INTO {{T}} SELECT * FROM {{T}} WHERE id = {first_id(2)}")  # a duplicate
        execute(f"UPDATE {{T}} SET pipestate_batch_id = 'ghost' WHERE id = {first_id(3)}")  # re-tagged
        execute(f"UPDATE {{T}} SET pipestate_batch_id = '{batch(5)}' WHERE id = {first_id(4)}")  # moved
        report = manager.reconcile()
    found = {(f.kind, f.batch_id) for f in report.findings}
    assert found == {
        ("missing", batch(1)),
        ("duplicated", batch(2)),
        ("missing", batch(3)),
        ("unknown_batch", "ghost"),
        ("missing", batch(4)),
        ("duplicated", batch(5)),
        ("out_of_window", batch(5)),
    }
    assert report.to_dict()["batch_ids"] == sorted({batch(h) for h in (1, 2, 3, 4, 5)})


def test_reconcile_sees_late_data_and_stray_rows_of_a_superseded_batch(tmp_path: Path, request) -> None:
    config, execute = setup(tmp_path, "sqlite", request)
    with PipelineStateManager(config) as manager:
        run_pipeline(manager)
        with (tmp_path / "source" / "events.ndjson").open("a", encoding="utf-8") as out:
            out.write(json.dumps({"id": 999, "timestamp": "2026-01-01T06:30:00+00:00"}) + "\n")
        manager.quarantine([batch(7)], reason="test")  # SUPERSEDED: its rows are strays now
        report = manager.reconcile(with_source=True)
        ranged = manager.reconcile(datetime(2026, 1, 1, 2, tzinfo=UTC), datetime(2026, 1, 1, 4, tzinfo=UTC))
    found = {(f.kind, f.batch_id) for f in report.findings}
    assert ("late_data", batch(6)) in found and ("stray", batch(7)) in found
    assert ranged.ok and ranged.completed == 2 and ranged.target_rows == 10


def test_reconcile_command_json_and_exit_codes(tmp_path: Path, request) -> None:
    config, execute = setup(tmp_path, "sqlite", request)
    with PipelineStateManager(config) as manager:
        run_pipeline(manager)
    config_path = tmp_path / "pipestate.toml"
    config_path.write_text(toml(config), encoding="utf-8")
    env = {**os.environ, "PIPESTATE_CONFIG": str(config_path)}

    def reconcile(*args: str) -> subprocess.CompletedProcess[str]:
        command = [PIPESTATE, "reconcile", "--json", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    clean = reconcile()
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["ok"] is True
    execute(f"DELETE FROM {{T}} WHERE id = {first_id(1)}")
    broken = reconcile("--start", "2026-01-01", "--end", "2026-01-02")
    assert broken.returncode == 1, broken.stderr
    data = json.loads(broken.stdout)
    assert data["batch_ids"] == [batch(1)] and data["counts"]["missing"] == 1
    text = subprocess.run([PIPESTATE, "reconcile"], env=env, capture_output=True, text=True, timeout=120)
    assert text.returncode == 1 and f"missing        {batch(1)}" in text.stdout
    bad = reconcile("--start", "yesterday")
    assert bad.returncode == 2 and "--start" in bad.stderr and "Traceback" not in bad.stderr
