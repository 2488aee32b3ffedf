"""One local day at a time, as the orchestrator integrations run it (pipestate.ops.days)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import pytest
from support import utc

from pipestate.errors import UsageError
from pipestate.manager import PipelineStateManager


def test_claims_within_a_range_take_only_windows_starting_in_it(
    manager_factory: Callable[..., PipelineStateManager],
) -> None:
    manager = manager_factory(timezone="America/New_York", end="2026-01-04")
    manager.populate_pipeline_batches()
    low, high = manager.day_span(date(2026, 1, 2))
    assert (low, high) == (utc(2026, 1, 2, 5), utc(2026, 1, 3, 5))
    taken = []
    while (batch := manager.claim("w", within=(low, high))) is not None:
        taken.append(batch)
        manager.complete(batch.batch_id, "w", batch.claim_token)
    assert len(taken) == 24
    assert all(low <= batch.start < high for batch in taken)
    # Nothing outside the day was touched, and the day is complete.
    assert manager.counts() == {"COMPLETED": 24, "PENDING": 48}
    state = manager.day_state("2026-01-02")
    assert state.complete and state.windows == 24 and state.covered_minutes == 24 * 60
    other = manager.day_state("2026-01-03")
    assert not other.complete and other.counts == {"PENDING": 24}


def test_a_day_with_a_gap_or_outside_the_range(manager_factory: Callable[..., PipelineStateManager]) -> None:
    manager = manager_factory(end="2026-01-02")
    assert manager.day_state("2026-01-01").windows == 0  # no table yet: nothing, and nothing created
    manager.populate_pipeline_batches()
    while (batch := manager.claim("w")) is not None:
        manager.complete(batch.batch_id, "w", batch.claim_token)
    assert manager.day_state(date(2026, 1, 1)).complete
    with pytest.raises(UsageError, match="outside the range of pipeline orders"):
        manager.day_state("2026-01-05")
    with pytest.raises(UsageError, match="expected YYYY-MM-DD"):
        manager.day_state("yesterday")


def test_a_run_that_fails_after_populate_says_what_populate_wrote(
    tmp_path, manager_factory: Callable[..., PipelineStateManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipestate.errors import StateStoreError
    from pipestate.run.runner import run_pipeline
    from pipestate.run.worker import Worker

    (tmp_path / "events").mkdir()
    manager = manager_factory()
    manager.config = manager.config.model_copy(
        update={
            "source": {"type": "files", "path": str(tmp_path / "events"), "time_field": "t"},
            "stage": {"type": "local", "url": str(tmp_path / "stage")},
            "target": {
                "type": "sql",
                "url": f"sqlite:///{tmp_path / 'target.db'}",
                "table": "e",
                "time_field": "t",
            },
        }
    )

    def broken(self: Worker, *args: object, **kwargs: object) -> None:
        raise StateStoreError("state database error (sqlite): disk I/O error")

    monkeypatch.setattr(Worker, "run", broken)
    with pytest.raises(StateStoreError) as failed:
        run_pipeline(manager)
    assert failed.value.__notes__ == ["before it, populate had created 24 and superseded 0 window(s)"]
    assert manager.counts() == {"PENDING": 24}
