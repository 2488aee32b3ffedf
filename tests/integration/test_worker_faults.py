"""Workers under load and faults, on a SQLite file and the local PostgreSQL.

Stress: 8 spawned processes churn through a few hundred batches with random
failures; afterwards every batch is finished and the audit trail shows no batch
was ever held by two claims at once. Faults: SIGKILL and SIGSTOP past the lease,
slow handlers kept alive by heartbeats, and SIGTERM (finish, then release).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import workers_support as ws

from pipestate.run.worker import Worker

shared_url = ws.shared_url  # the fixture: a SQLite file or the local PostgreSQL
SPAWN = multiprocessing.get_context("spawn")
ONE_WINDOW = {"end": "2026-01-01T01:00"}


def start_worker(url: str, table: str, worker_id: str, folder: Path, hold: float, **settings: Any) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    process = SPAWN.Process(target=ws.run_worker, args=(url, table, worker_id, str(folder), hold, settings))
    process.start()
    return process


def test_eight_processes_random_failures_nothing_lost_never_held_twice(
    shared_url: str, table_name: str
) -> None:
    settings = {"lease": "30s", "max_retries": 3, "retry_backoff": "1s", "end": "2026-01-11"}
    manager = ws.make_manager(shared_url, table_name, **settings)
    manager.populate_pipeline_batches()
    batch_ids = {row["batch_id"] for row in ws.rows(manager)}
    assert len(batch_ids) == 240
    with SPAWN.Pool(8) as pool:
        work = pool.starmap(ws.churn, [(shared_url, table_name, f"p{i}", i, 0.2, settings) for i in range(8)])
    final = ws.rows(manager)
    assert {row["batch_id"] for row in final} == batch_ids, "a batch was lost or added"
    for row in final:
        if row["pipeline_status"] == "COMPLETED":
            assert row["retry_count"] < 3
        else:
            assert (row["pipeline_status"], row["retry_count"]) == ("FAILED", 3), row["batch_id"]
        if row["source_query_window_start_time"].hour == 0:  # the always-failing ones
            assert row["pipeline_status"] == "FAILED"
    trail = ws.events(manager)
    assert ws.claim_violations(trail) == []
    kinds = Counter(event["event_type"] for event in trail)
    assert kinds["CLAIMED"] == sum(w["completed"] + w["failed"] for w in work)
    assert kinds["COMPLETED"] == sum(row["pipeline_status"] == "COMPLETED" for row in final)
    assert kinds["FAILED"] == sum(w["failed"] for w in work)
    assert sum(1 for w in work if w["completed"]) >= 2, "the work was not shared"
    manager.close()


def test_sigkilled_worker_is_taken_over_and_its_late_complete_refused(
    shared_url: str, table_name: str, tmp_path: Path
) -> None:
    settings = {"lease": "2s", **ONE_WINDOW}
    manager = ws.make_manager(shared_url, table_name, **settings)
    manager.populate_pipeline_batches()
    victim = start_worker(shared_url, table_name, "victim", tmp_path / "victim", hold=120, **settings)
    claimed = ws.wait_for(tmp_path / "victim" / "claimed-1.json")
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    rescuer = ws.make_manager(shared_url, table_name, lease="1h", **ONE_WINDOW)
    assert rescuer.claim("rescuer") is None, "the victim's lease was still live"
    killed_at = time.monotonic()
    taken = ws.claim_when_expired(rescuer, "rescuer")
    assert time.monotonic() - killed_at < 5
    assert taken.batch_id == claimed["batch_id"] and taken.retry_count == 1
    before, trail = ws.row(manager, taken.batch_id), ws.events(manager)
    config = tmp_path / "pipestate.toml"
    config.write_text(ws.toml_text(ws.config_dict(shared_url, table_name, **settings)))
    for extra in (["--token", claimed["token"]], []):
        late = subprocess.run(
            [ws.PIPESTATE, "complete", taken.batch_id, "--worker", "victim", *extra, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert late.returncode == 4, late.stderr
        assert "Traceback" not in late.stderr
    assert ws.row(manager, taken.batch_id) == before
    assert ws.events(manager) == trail
    expired = [e for e in trail if e["event_type"] == "LEASE_EXPIRED"]
    assert [(e["worker_id"], e["claim_token"]) for e in expired] == [("victim", claimed["token"])]
    rescuer.complete(taken.batch_id, "rescuer", taken.claim_token)
    assert ws.claim_violations(ws.events(manager)) == []
    rescuer.close()
    manager.close()


def test_stopped_worker_resumed_after_takeover_changes_nothing(
    shared_url: str, table_name: str, tmp_path: Path
) -> None:
    settings = {"lease": "2s", **ONE_WINDOW}
    manager = ws.make_manager(shared_url, table_name, **settings)
    manager.populate_pipeline_batches()
    sleeper = start_worker(shared_url, table_name, "sleeper", tmp_path / "sleeper", hold=3, **settings)
    claimed = ws.wait_for(tmp_path / "sleeper" / "claimed-1.json")
    os.kill(sleeper.pid, signal.SIGSTOP)
    try:
        rescuer = ws.make_manager(shared_url, table_name, lease="1h", **ONE_WINDOW)
        taken = ws.claim_when_expired(rescuer, "rescuer")
        assert taken.batch_id == claimed["batch_id"]
        before, trail = ws.row(manager, taken.batch_id), ws.events(manager)
    finally:
        os.kill(sleeper.pid, signal.SIGCONT)
    summary = ws.wait_for(tmp_path / "sleeper" / "summary.json")
    sleeper.join(30)
    assert sleeper.exitcode == 0
    assert summary["lost"] == 1 and summary["completed"] == 0
    assert ws.row(manager, taken.batch_id) == before, "the resumed worker's writes changed the row"
    assert ws.events(manager) == trail
    rescuer.complete(taken.batch_id, "rescuer", taken.claim_token)
    assert ws.claim_violations(ws.events(manager)) == []
    rescuer.close()
    manager.close()


def test_heartbeats_keep_a_slow_batch_for_three_leases(shared_url: str, table_name: str) -> None:
    manager = ws.make_manager(shared_url, table_name, lease="2s", **ONE_WINDOW)
    manager.populate_pipeline_batches()
    worker = Worker(manager, worker_id="slow", heartbeat_interval=60)
    assert worker.heartbeat_interval <= 2 / 3
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(summary=worker.run(lambda batch: time.sleep(6))))
    thread.start()
    # The thief starts once the worker holds the batch: before that, taking it is no theft.
    deadline = time.monotonic() + 30
    while ws.count_status(manager, "IN_PROGRESS") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    thief = ws.make_manager(shared_url, table_name, lease="1h", **ONE_WINDOW)
    stolen = []
    while thread.is_alive():
        if (batch := thief.claim("thief")) is not None:
            stolen.append(batch)
        time.sleep(0.1)
    thread.join()
    assert stolen == []
    assert outcome["summary"].completed == 1 and outcome["summary"].lost == 0
    (only,) = ws.rows(manager)
    assert ws.kinds(manager, only["batch_id"]) == ["CREATED", "CLAIMED", "COMPLETED"]
    thief.close()
    manager.close()


def test_sigterm_finishes_the_batch_then_a_second_one_releases(
    shared_url: str, table_name: str, tmp_path: Path
) -> None:
    settings = {"lease": "1m", "end": "2026-01-01T02:00"}
    manager = ws.make_manager(shared_url, table_name, **settings)
    manager.populate_pipeline_batches()
    first, second = (row["batch_id"] for row in ws.rows(manager))

    polite = start_worker(shared_url, table_name, "polite", tmp_path / "polite", hold=2, **settings)
    assert ws.wait_for(tmp_path / "polite" / "claimed-1.json")["batch_id"] == first
    os.kill(polite.pid, signal.SIGTERM)
    summary = ws.wait_for(tmp_path / "polite" / "summary.json")
    polite.join(30)
    assert polite.exitcode == 0
    assert summary == {**summary, "completed": 1, "released": 0}
    assert not (tmp_path / "polite" / "claimed-2.json").exists()
    assert ws.row(manager, first)["pipeline_status"] == "COMPLETED"
    assert ws.row(manager, second)["pipeline_status"] == "PENDING"

    hasty = start_worker(shared_url, table_name, "hasty", tmp_path / "hasty", hold=120, **settings)
    assert ws.wait_for(tmp_path / "hasty" / "claimed-1.json")["batch_id"] == second
    os.kill(hasty.pid, signal.SIGTERM)
    time.sleep(0.3)
    os.kill(hasty.pid, signal.SIGTERM)
    summary = ws.wait_for(tmp_path / "hasty" / "summary.json", timeout=15)
    hasty.join(30)
    assert hasty.exitcode == 0
    assert summary["released"] == 1 and summary["completed"] == 0
    stored = ws.row(manager, second)
    assert (stored["pipeline_status"], stored["retry_count"]) == ("PENDING", 0)
    last = ws.events(manager, second)[-1]
    assert (last["event_type"], last["worker_id"], last["new_status"]) == ("RELEASED", "hasty", "PENDING")
    manager.close()
