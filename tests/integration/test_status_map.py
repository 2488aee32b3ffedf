"""Adopting a table whose statuses are another tool's: [state] status_map, on every database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import NOW, all_rows, config_dict, external_row, insert_external, utc

from pipestate.config import Config
from pipestate.errors import ConfigError
from pipestate.manager import PipelineStateManager

LEGACY = {"SUCCESS": "COMPLETED", "completed": "COMPLETED", "waiting": "PENDING", "error": "FAILED"}


def manager_with(db_url: str, table: str, status_map: dict[str, str]) -> PipelineStateManager:
    data = config_dict(db_url, table)
    data["state"]["status_map"] = status_map
    return PipelineStateManager(Config.from_dict(data), clock=lambda: NOW)


@pytest.fixture
def legacy(db_url: str, table_name: str) -> Iterator[PipelineStateManager]:
    """A day of hourly rows written by another tool with its own statuses; 05:00-06:00
    finished (SUCCESS) and overlapped by a later PENDING 05:30-06:30 row."""
    plain = manager_with(db_url, table_name, {})
    statuses = ["SUCCESS"] * 5 + ["completed"] * 5 + ["waiting"] * 10 + ["error"] * 3
    rows = [
        external_row(f"legacy-{hour:02d}", utc(2026, 1, 1, hour), utc(2026, 1, 1, hour + 1), status)
        for hour, status in enumerate(statuses)
    ]
    rows.append(external_row("legacy-23", utc(2026, 1, 1, 23), utc(2026, 1, 2), "error"))
    rows.append(
        external_row(
            "late-pending",
            utc(2026, 1, 1, 5, 30),
            utc(2026, 1, 1, 6, 30),
            "PENDING",
            updated_at=utc(2026, 2, 1),
        )
    )
    insert_external(plain, rows)
    plain.close()
    manager = manager_with(db_url, table_name, LEGACY)
    yield manager
    manager.close()


def test_without_the_map_the_legacy_statuses_are_invalid_rows(db_url: str, table_name: str, legacy) -> None:
    plain = manager_with(db_url, table_name, {})
    report = plain.validate()
    plain.close()
    reasons = {row.batch_id: row.reason for row in report.plan.invalid}
    assert "unknown pipeline_status 'SUCCESS'" in reasons["legacy-00"]
    assert len(reasons) == 24


def test_mapped_statuses_are_read_everywhere(legacy: PipelineStateManager) -> None:
    report = legacy.validate()
    assert report.plan.invalid == []
    # The finished window wins the overlap, as a COMPLETED one must.
    [resolution] = report.plan.resolutions
    assert (resolution.kept.batch_id, resolution.superseded.batch_id) == ("legacy-05", "late-pending")
    assert legacy.counts() == {"COMPLETED": 10, "PENDING": 11, "FAILED": 4}
    status = legacy.status()
    assert status["counts"]["COMPLETED"] == 10 and status["counts"]["FAILED"] == 4

    populated = legacy.populate_pipeline_batches()
    assert [entry["batch_id"] for entry in populated.superseded] == ["late-pending"]
    assert legacy.counts() == {"COMPLETED": 10, "PENDING": 10, "FAILED": 4, "SUPERSEDED": 1}
    # Claims take the mapped PENDING and FAILED rows, never a mapped COMPLETED one.
    claimed = []
    while (batch := legacy.claim("w")) is not None:
        claimed.append(batch.batch_id)
        legacy.complete(batch.batch_id, "w", batch.claim_token)
    assert sorted(claimed) == [f"legacy-{hour:02d}" for hour in range(10, 24)]
    assert all_rows(legacy)[0]["pipeline_status"] == "COMPLETED"  # SUCCESS, read through the map
    assert legacy.counts() == {"COMPLETED": 24, "SUPERSEDED": 1}


def test_requeue_selects_by_the_mapped_status(legacy: PipelineStateManager) -> None:
    done = legacy.requeue(statuses=("FAILED",))
    assert done == ["legacy-20", "legacy-21", "legacy-22", "legacy-23"]
    assert legacy.counts()["PENDING"] == 15


@pytest.mark.parametrize(
    ("status_map", "message"),
    [
        ({"SUCCESS": "DONE"}, "'SUCCESS' must map to one of PENDING"),
        ({"COMPLETED": "FAILED"}, "'COMPLETED' is pipestate's own status"),
        ("SUCCESS", "expected OTHER=STATUS"),
    ],
)
def test_a_bad_status_map_is_a_config_error(status_map: object, message: str) -> None:
    data = config_dict("sqlite://", "t")
    data["state"]["status_map"] = status_map
    with pytest.raises(ConfigError, match=r"\[state\] status_map"):
        try:
            Config.from_dict(data)
        except ConfigError as err:
            assert message in str(err)
            raise


def test_the_status_map_from_the_environment() -> None:
    from pipestate.config import load_config

    config = load_config(
        None,
        environ={
            "PIPESTATE_PIPELINE__NAME": "p",
            "PIPESTATE_PIPELINE__START": "2026-01-01",
            "PIPESTATE_STATE__STATUS_MAP": "SUCCESS=COMPLETED, done=COMPLETED",
        },
    )
    assert config.state.status_map == {"SUCCESS": "COMPLETED", "done": "COMPLETED"}


def test_quarantine_takes_invalid_rows_out_with_an_event(db_url: str, table_name: str) -> None:
    from support import events

    from pipestate.errors import UsageError

    manager = manager_with(db_url, table_name, {})
    insert_external(
        manager,
        [
            external_row("backwards", utc(2026, 1, 1, 3), utc(2026, 1, 1, 2)),
            external_row("odd-status", utc(2026, 1, 1, 5), utc(2026, 1, 1, 6), "SUCCESS"),
        ],
    )
    manager.populate_pipeline_batches()
    assert {row.batch_id for row in manager.validate().plan.invalid} == {"backwards", "odd-status"}
    with pytest.raises(UsageError, match="no such batch in pipeline orders: nope"):
        manager.quarantine(["backwards", "nope"], "bad rows")
    done = manager.quarantine(["backwards", "odd-status"], "written by the old loader")
    assert done == [
        {"batch_id": "backwards", "previous_status": "COMPLETED"},
        {"batch_id": "odd-status", "previous_status": "SUCCESS"},
    ]
    quarantined = [event for event in events(manager) if event["event_type"] == "QUARANTINED"]
    assert [(e["batch_id"], e["old_status"], e["new_status"]) for e in quarantined] == [
        ("backwards", "COMPLETED", "SUPERSEDED"),
        ("odd-status", "SUCCESS", "SUPERSEDED"),
    ]
    rows = {row["batch_id"]: row for row in all_rows(manager)}
    assert rows["odd-status"]["supersede_reason"] == "quarantined: written by the old loader"
    assert rows["odd-status"]["superseded_by"] is None
    # Its hour is uncovered now: populate fills it, and the table validates clean.
    assert manager.validate().plan.invalid == []
    created = manager.populate_pipeline_batches().created
    assert [(entry["start"], entry["end"]) for entry in created] == [
        ("2026-01-01T05:00:00+00:00", "2026-01-01T06:00:00+00:00")
    ]
    report = manager.validate()
    assert not (report.plan.invalid or report.plan.gaps or report.plan.resolutions)
    with pytest.raises(UsageError, match="already SUPERSEDED"):
        manager.quarantine(["odd-status"], "again")
    manager.close()
