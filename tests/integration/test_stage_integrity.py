"""Counts that cannot be fooled: the target step loads only the stage the stage step recorded
(issue 20, point 2). A changed stage is extracted again on a retry, and fails the batch when
the user asked for that stage (`requeue --from-step target`)."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import run_support
import sqlalchemy as sa

from pipestate.config import Config
from pipestate.connectors import BatchContext, build_stage
from pipestate.manager import PipelineStateManager
from pipestate.run.runner import run_pipeline

WINDOW = {"start": datetime(2026, 1, 1, 5, tzinfo=UTC), "end": datetime(2026, 1, 1, 6, tzinfo=UTC)}


def setup(tmp_path: Path, **extract: Any) -> tuple[Config, int]:
    events = run_support.write_events(tmp_path / "source", datetime(2026, 1, 1, tzinfo=UTC), 24, 20)
    url = f"sqlite:///{tmp_path / 'target.db'}"
    data = run_support.config(tmp_path, "2026-01-01", "2026-01-02", target_url=url, **extract)
    return Config.from_dict(data), events


def state_row(manager: PipelineStateManager, batch_id: str) -> dict[str, Any]:
    state = manager.store.tables.state
    with manager.store.engine.connect() as conn:
        return conn.execute(sa.select(state).where(state.c.batch_id == batch_id)).one()._asdict()


def target_ids(config: Config) -> Counter[str]:
    engine = sa.create_engine(config.target["url"])
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT pipestate_batch_id FROM events")).all()
    engine.dispose()
    return Counter(row[0] for row in rows)


def shrink(location: str, keep: int = 10) -> None:
    """Replace a staged Parquet file with its first `keep` rows (the reproduction)."""
    path = location.removeprefix("file://")
    pq.write_table(pq.read_table(path).slice(0, keep), path)


def test_a_shrunk_stage_under_from_step_target_fails_and_deletes_nothing(tmp_path: Path) -> None:
    config, _ = setup(tmp_path)
    with PipelineStateManager(config) as manager:
        run_pipeline(manager)
        (batch_id,) = manager.requeue(statuses=("COMPLETED",), from_step="target", **WINDOW)
        recorded = state_row(manager, batch_id)
        assert recorded["stage_fingerprint"]
        shrink(recorded["stage_location"])
        result = run_pipeline(manager)
        row = state_row(manager, batch_id)
    assert result.summary.failed_ids == {batch_id}
    assert row["pipeline_status"] == "FAILED" and row["last_error_kind"] == "terminal"
    assert "StageChanged" in row["last_error"] and "records 20 recorded, 10 now" in row["last_error"]
    assert "\n" not in row["last_error"]
    assert target_ids(config)[batch_id] == 20  # the earlier load stays: nothing deleted


def test_a_stage_changed_to_the_same_count_is_caught_by_its_fingerprint(tmp_path: Path) -> None:
    config, _ = setup(tmp_path)
    with PipelineStateManager(config) as manager:
        run_pipeline(manager)
        (batch_id,) = manager.requeue(statuses=("COMPLETED",), from_step="target", **WINDOW)
        path = state_row(manager, batch_id)["stage_location"].removeprefix("file://")
        table = pq.read_table(path)
        ids = table.column("id").to_pylist()
        pq.write_table(table.set_column(0, "id", pa.array([ids[0] + 10**6, *ids[1:]])), path)
        run_pipeline(manager)
        row = state_row(manager, batch_id)
    assert row["pipeline_status"] == "FAILED" and "changed since the stage step" in row["last_error"]


def test_a_changed_stage_on_a_retry_is_extracted_again(tmp_path: Path) -> None:
    log = tmp_path / "extracts.log"
    config, events = setup(tmp_path, type="run_support:SlowFilesSource", extract_log=str(log))
    with PipelineStateManager(config) as manager:
        run_pipeline(manager)
        (batch_id,) = manager.requeue(statuses=("COMPLETED",), from_step="target", **WINDOW)
        # As a worker that died in the target step leaves it (its lease then lapsed).
        state = manager.store.tables.state
        with manager.store.engine.begin() as conn:
            conn.execute(
                sa.update(state).where(state.c.batch_id == batch_id).values(target_load_status="RUNNING")
            )
        shrink(state_row(manager, batch_id)["stage_location"])
        assert run_pipeline(manager).summary.completed == 1
        row = state_row(manager, batch_id)
    assert row["pipeline_status"] == "COMPLETED"
    assert row["source_record_count"] == row["stage_record_count"] == row["target_record_count"] == 20
    assert log.read_text().split().count(batch_id) == 2  # extracted again
    assert sum(target_ids(config).values()) == events


def batch() -> BatchContext:
    return BatchContext.for_window("orders", WINDOW["start"], WINDOW["end"])


def test_a_multi_part_stage_fingerprints_every_part(tmp_path: Path) -> None:
    stage = build_stage({"type": "local", "url": str(tmp_path), "max_file_mb": 1})
    chunks = [
        pa.RecordBatch.from_pylist([{"id": n, "text": os.urandom(100).hex()} for n in range(k, k + 2000)])
        for k in range(0, 12_000, 2000)
    ]
    staged = stage.write(batch(), chunks)
    assert staged.file_count > 1 and staged.fingerprint
    assert stage.find(batch()) == staged
    last = staged.files[-1].removeprefix("file://")
    pq.write_table(pq.read_table(last).slice(1), last)
    assert stage.find(batch()).fingerprint != staged.fingerprint  # type: ignore[union-attr]


def test_an_ndjson_stage_changed_in_place_changes_its_fingerprint(tmp_path: Path) -> None:
    import gzip

    stage = build_stage({"type": "local", "url": str(tmp_path), "format": "ndjson.gz"})
    staged = stage.write(batch(), [{"id": n} for n in range(100)])
    path = Path(staged.location.removeprefix("file://"))
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    lines[3] = json.dumps({"id": 9})  # same length, same count
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))
    found = stage.find(batch())
    assert found is not None and found.record_count == 100
    assert found.fingerprint != staged.fingerprint


def test_a_table_of_schema_version_1_is_brought_up_to_date_by_run(tmp_path: Path) -> None:
    config, events = setup(tmp_path)
    with PipelineStateManager(config) as manager:
        manager.init_db()
        with manager.store.engine.begin() as conn:  # as pipestate before stage_fingerprint left it
            conn.execute(sa.text("ALTER TABLE pipeline_state DROP COLUMN stage_fingerprint"))
            conn.execute(sa.text("UPDATE pipeline_state_meta SET value = '1' WHERE name = 'schema_version'"))
    with PipelineStateManager(config) as manager:
        assert run_pipeline(manager).summary.completed == 24
        with manager.store.engine.connect() as conn:
            version = conn.execute(
                sa.text("SELECT value FROM pipeline_state_meta WHERE name = 'schema_version'")
            )
            assert version.scalar_one() == "2"
    assert sum(target_ids(config).values()) == events
