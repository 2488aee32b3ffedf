"""The worker commands through the installed `pipestate` script: JSON shapes and exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import workers_support as ws  # noqa: E402 - lives next to the integration tests

# Each command is a fresh interpreter (~1 s of imports), so the full set runs on SQLite
# and one test repeats the claim/fence round trip on PostgreSQL.
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")


def runner(url: str, table: str, folder: Path) -> Any:
    """`run(*args)` -> CompletedProcess of `pipestate ARGS --config <a populated pipeline of 6 windows>`."""
    config = folder / "pipestate.toml"
    config.write_text(ws.toml_text(ws.config_dict(url, table, lease="1m", max_retries=2)))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ws.PIPESTATE, *args, "--config", str(config)], capture_output=True, text=True, timeout=60
        )

    assert run("populate").returncode == 0
    return run


@pytest.fixture
def cli(table_name: str, tmp_path: Path) -> Iterator[Any]:
    yield runner(f"sqlite:///{tmp_path / 'state.db'}", table_name, tmp_path)


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_claim_json_shape_then_null_when_nothing_left(cli: Any, table_name: str, tmp_path: Path) -> None:
    batch = as_json(cli("claim", "--worker", "w1", "--json"))["batch"]
    for key in ("batch_id", "start", "end", "duration_minutes", "retry_count", "lease_expires_at"):
        assert key in batch
    for key in ("start", "end", "lease_expires_at", "claimed_at"):
        assert ISO.match(batch[key]), (key, batch[key])
    assert batch["start"] == "2026-01-01T00:00:00+00:00"
    assert (batch["duration_minutes"], batch["retry_count"], batch["worker_id"]) == (60, 0, "w1")
    api = ws.make_manager(f"sqlite:///{tmp_path / 'state.db'}", table_name)
    assert all(api.claim(f"w{i}") is not None for i in range(5))
    api.close()
    assert as_json(cli("claim", "--worker", "late", "--json")) == {"batch": None}


def test_heartbeat_complete_fail_exit_4_for_a_stale_caller(cli: Any) -> None:
    batch = as_json(cli("claim", "--worker", "w1", "--json"))["batch"]
    bid, token = batch["batch_id"], batch["claim_token"]
    for args in (
        ("heartbeat", bid, "--worker", "other"),
        ("complete", bid, "--worker", "other"),
        ("fail", bid, "--worker", "other", "--error", "x"),
        ("complete", bid, "--worker", "w1", "--token", "not-the-token"),
        ("complete", "no-such-batch", "--worker", "w1"),
    ):
        done = cli(*args)
        assert done.returncode == 4, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert cli("heartbeat", bid, "--worker", "w1", "--token", token).returncode == 0
    assert cli("complete", bid, "--worker", "w1", "--token", token).returncode == 0
    assert cli("complete", bid, "--worker", "w1", "--token", token).returncode == 4
    story = as_json(cli("history", bid, "--json"))
    assert story["batch_id"] == bid
    assert [e["event_type"] for e in story["events"]] == ["CREATED", "CLAIMED", "COMPLETED"]
    assert all(ISO.match(e["event_time"]) for e in story["events"])


def test_fail_requeue_and_status(cli: Any) -> None:
    batch = as_json(cli("claim", "--worker", "w1", "--json"))["batch"]
    bid = batch["batch_id"]
    done = cli("fail", bid, "--worker", "w1", "--error", "boom", "--step", "source")
    assert done.returncode == 0 and "FAILED" in done.stdout
    other = as_json(cli("claim", "--worker", "w2", "--json"))["batch"]
    status = as_json(cli("status", "--json"))
    for key in ("counts", "in_flight", "expired_leases", "failed_permanently", "failures", "coverage"):
        assert key in status
    assert [(e["batch_id"], e["worker_id"]) for e in status["in_flight"]] == [(other["batch_id"], "w2")]
    assert status["counts"]["FAILED"] == 1 and status["failures"][0]["last_error"] == "boom"
    assert as_json(cli("requeue", bid, "--json")) == {"requeued": [bid]}
    assert as_json(cli("requeue", "--failed", "--json")) == {"requeued": []}
    assert cli("complete", other["batch_id"], "--worker", "w2").returncode == 0
    ranged = cli(
        "requeue",
        "--start",
        "2026-01-01T00:00:00Z",
        "--end",
        "2026-01-01T03:00:00Z",
        "--status",
        "COMPLETED",
        "--json",
    )
    assert as_json(ranged) == {"requeued": [other["batch_id"]]}
    kinds = [e["event_type"] for e in as_json(cli("history", bid, "--json"))["events"]]
    assert kinds == ["CREATED", "CLAIMED", "FAILED", "REQUEUED"]
    assert cli("requeue").returncode == 2
    live = as_json(cli("claim", "--worker", "w3", "--json"))["batch"]
    refused = cli("requeue", live["batch_id"])
    assert refused.returncode == 2 and "--force" in refused.stderr


def test_claim_needs_a_worker_id(cli: Any) -> None:
    done = cli("claim")
    assert done.returncode == 2 and "--worker" in done.stderr


@pytest.mark.postgres
def test_claim_and_fencing_on_postgres(table_name: str, tmp_path: Path) -> None:
    with ws.postgres_url(table_name) as url:
        run = runner(url, table_name, tmp_path)
        batch = as_json(run("claim", "--worker", "w1", "--json"))["batch"]
        assert ISO.match(batch["lease_expires_at"]) and batch["retry_count"] == 0
        assert run("complete", batch["batch_id"], "--worker", "w2").returncode == 4
        token = batch["claim_token"]
        assert run("complete", batch["batch_id"], "--worker", "w1", "--token", token).returncode == 0


def test_claim_count_prints_batches_beside_batch(cli: Any) -> None:
    shown = as_json(cli("claim", "--worker", "w1", "--count", "2", "--json"))
    assert [b["start"][11:13] for b in shown["batches"]] == ["00", "01"]
    assert shown["batch"] == shown["batches"][0]
    assert len({b["claim_token"] for b in shown["batches"]}) == 2
    assert "batches" not in as_json(cli("claim", "--worker", "w2", "--json"))
    rest = as_json(cli("claim", "--worker", "w3", "--count", "9", "--json"))
    assert len(rest["batches"]) == 3
    assert as_json(cli("claim", "--worker", "w4", "--count", "2", "--json")) == {"batch": None, "batches": []}
    assert cli("claim", "--worker", "w4", "--count", "0").returncode == 2
