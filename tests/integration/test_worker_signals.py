"""Worker stop signals that arrive outside the caller's code (in-process, SQLite)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import support

from pipestate.run.worker import Worker


def _manager(tmp_path: Path):  # type: ignore[no-untyped-def]
    manager = support.make_manager(
        f"sqlite:///{tmp_path / 'state.db'}", "pipeline_state", end="2026-01-01T03:00"
    )
    manager.populate_pipeline_batches()
    return manager


def test_second_signal_during_complete_still_completes(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    manager = _manager(tmp_path)
    real_complete = manager.complete

    def complete_under_fire(*args, **kwargs):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # the second one must not abandon the batch
        return real_complete(*args, **kwargs)

    monkeypatch.setattr(manager, "complete", complete_under_fire)
    summary = Worker(manager, "w").run(lambda batch: None)
    assert (summary.completed, summary.released) == (1, 0)
    counts = manager.counts()
    assert counts.get("IN_PROGRESS", 0) == 0 and counts["COMPLETED"] == 1
    manager.close()


def test_second_signal_in_the_handler_releases_and_is_counted_once(tmp_path: Path) -> None:
    manager = _manager(tmp_path)

    def handler(batch):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

    summary = Worker(manager, "w").run(handler)
    assert (summary.completed, summary.released) == (0, 1)
    assert manager.counts() == {"PENDING": 3}
    manager.close()
