"""The smaller breaks of issue 20 (point 8), each a reproduction that failed before."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipestate.config import Config
from pipestate.connectors import BatchContext, build_source
from pipestate.errors import ConnectorError, UsageError
from pipestate.manager import PipelineStateManager

PIPESTATE = str(Path(sys.executable).with_name("pipestate"))
HOUR = BatchContext.for_window(
    "o", datetime(2026, 1, 1, 10, tzinfo=UTC), datetime(2026, 1, 1, 11, tzinfo=UTC)
)


def manager_for(tmp_path: Path, **pipeline: str) -> PipelineStateManager:
    data = {
        "pipeline": {"name": "small", "start": "2026-01-01", "end": "2026-01-01T06:00:00+00:00", **pipeline},
        "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
    }
    return PipelineStateManager(Config.from_dict(data))


def test_a_file_name_that_is_not_utf8_is_read_like_any_other(tmp_path: Path) -> None:
    (tmp_path / "good.ndjson").write_text('{"id": 1, "timestamp": "2026-01-01T10:00:00Z"}\n')
    odd = os.fsdecode(bytes(tmp_path) + b"/odd\xff.ndjson")
    Path(odd).write_text('{"id": 2, "timestamp": "2026-01-01T10:30:00Z"}\n')
    source = build_source({"type": "files", "path": str(tmp_path)})
    assert sorted(r["id"] for c in source.extract(HOUR) for r in c.to_pylist()) == [1, 2]
    assert source.window_counts([(HOUR.start, HOUR.end)]) == [2]  # type: ignore[attr-defined]


def test_a_csv_header_naming_a_column_twice_says_so(tmp_path: Path) -> None:
    (tmp_path / "dup.csv").write_text("id,ts,ts\n1,2026-01-01T10:00:00Z,x\n")
    source = build_source({"type": "files", "path": str(tmp_path), "time_field": "ts"})
    with pytest.raises(ConnectorError, match="names 'ts' more than once"):
        list(source.extract(HOUR))


def test_a_window_shorter_than_a_minute_never_says_zero(tmp_path: Path) -> None:
    with manager_for(
        tmp_path, granularity="1m", start="2026-01-01T00:00:30+00:00", end="2026-01-01T00:03:00+00:00"
    ) as manager:
        manager.populate_pipeline_batches()
        state = manager.store.tables.state
        with manager.store.engine.connect() as conn:
            minutes = conn.execute(sa.select(state.c.source_query_window_duration_minutes)).scalars().all()
    assert sorted(minutes) == [1, 1, 1]


def test_the_target_time_field_follows_the_sources() -> None:
    base = {
        "pipeline": {"name": "x", "start": "2026-01-01"},
        "source": {"type": "files", "path": ".", "time_field": "ts"},
    }
    assert (
        Config.from_dict({**base, "target": {"type": "sql", "url": "sqlite://"}}).target["time_field"] == "ts"
    )
    explicit = {"type": "sql", "url": "sqlite://", "time_field": "when"}
    assert Config.from_dict({**base, "target": explicit}).target["time_field"] == "when"


def test_python_api_misuse_is_a_usage_error_and_leaves_nothing_in_progress(tmp_path: Path) -> None:
    with manager_for(tmp_path) as manager:
        manager.populate_pipeline_batches()
        with pytest.raises(UsageError, match="worker: must be text"):
            manager.claim(123)  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="within: naive"):
            manager.claim("w", (datetime(2026, 1, 1), datetime(2026, 1, 2)))
        batch = manager.claim("w")
        assert batch is not None
        manager.fail(batch.batch_id, "w", "bad \udcff name", batch.claim_token)
        assert manager.statuses([batch.batch_id])[batch.batch_id] == "FAILED"
    data = {
        "pipeline": {"name": "small", "start": "2026-01-01"},
        "state": {"url": f"sqlite:///{tmp_path / 's.db'}"},
    }
    clocked = PipelineStateManager(Config.from_dict(data), clock=lambda: "2026-01-01")  # type: ignore[arg-type,return-value]
    try:
        with pytest.raises(UsageError, match="clock: must be a datetime"):
            clocked.populate_pipeline_batches()
    finally:
        clocked.close()


def test_requeue_of_a_superseded_batch_says_so(tmp_path: Path) -> None:
    with manager_for(tmp_path) as manager:
        manager.populate_pipeline_batches()
        state = manager.store.tables.state
        with manager.store.engine.connect() as conn:
            first = conn.execute(sa.select(state.c.batch_id).limit(1)).scalar_one()
        manager.quarantine([first], reason="test")
        with pytest.raises(UsageError, match="is SUPERSEDED"):
            manager.requeue([first])


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIPESTATE_CONFIG": str(tmp_path / "pipestate.toml")}
    return subprocess.run([PIPESTATE, *args], env=env, capture_output=True, text=True, timeout=120)


def test_calendar_edges_and_a_huge_limit_are_exit_2_and_escapes_never_reach_the_terminal(
    tmp_path: Path,
) -> None:
    (tmp_path / "pipestate.toml").write_text(
        '[pipeline]\nname = "small"\nstart = "2026-01-01"\nend = "2026-01-01T06:00:00+00:00"\n'
        '[state]\nurl = "sqlite:///state.db"\n'
    )
    assert cli(tmp_path, "populate").returncode == 0
    for args in (["--date", "9999-12-31"], ["--start", "9999-12-31"], ["--limit", "99999999999999999999"]):
        done = cli(tmp_path, "windows", *args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr)
    worker = "evil\x1b]0;pwned\x07"
    claimed = cli(tmp_path, "claim", "--worker", worker, "--json")
    assert claimed.returncode == 0, claimed.stderr
    import json

    batch_id = json.loads(claimed.stdout)["batch"]["batch_id"]
    assert (
        cli(
            tmp_path, "fail", batch_id, "--worker", worker, "--error", "boom \x1b[2J\x1b]8;;http://x\x07"
        ).returncode
        == 0
    )
    for command in ("windows", "status"):
        shown = cli(tmp_path, command)
        assert shown.returncode in (0, 1), shown.stderr
        assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout, command
