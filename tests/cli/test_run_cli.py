"""`pipestate demo` and `pipestate run` through the installed command (subprocess)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

PIPESTATE = str(Path(sys.executable).with_name("pipestate"))


def _pipestate(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PIPESTATE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.mark.duckdb
def test_demo_runs_end_to_end_exactly_once(tmp_path: Path) -> None:
    pytest.importorskip("duckdb_engine")
    done = _pipestate("demo", "--dir", "d", "--days", "1", "--events-per-hour", "15", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "exactly once" in done.stdout
    assert "Traceback" not in done.stderr
    status = _pipestate("status", "--json", "--config", "d/pipestate.toml", cwd=tmp_path)
    data = json.loads(status.stdout)
    assert data["counts"]["COMPLETED"] == 24 and data["coverage"]["percent"] == 100.0


@pytest.mark.duckdb
def test_demo_with_injected_failures_still_ends_exactly_once(tmp_path: Path) -> None:
    pytest.importorskip("duckdb_engine")
    done = _pipestate(
        "demo",
        "--dir",
        "d",
        "--days",
        "1",
        "--events-per-hour",
        "10",
        "--inject-failures",
        "0.3",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "exactly once" in done.stdout
    assert "injected failure" in done.stderr  # the failures really happened


def _config(tmp_path: Path, delay: float) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    lines = [json.dumps({"id": n, "ts": f"2026-01-01T{n % 24:02d}:30:00Z"}) for n in range(48)]
    (source / "events.ndjson").write_text("\n".join(lines) + "\n")
    config = tmp_path / "pipestate.toml"
    config.write_text(
        f"""
[pipeline]
name = "ev"
start = "2026-01-01"
end = "2026-01-02"
[state]
url = "sqlite:///{tmp_path / "state.db"}"
[concurrency]
lease = "30s"
[source]
type = "run_support:SlowFilesSource"
path = "{source}"
time_field = "ts"
delay = {delay}
[stage]
url = "{tmp_path / "stage"}"
[target]
url = "sqlite:///{tmp_path / "target.db"}"
table = "events"
time_field = "ts"
"""
    )
    return config


def test_run_json_summary(tmp_path: Path) -> None:
    config = _config(tmp_path, 0)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "integration")}
    done = subprocess.run(
        [PIPESTATE, "run", "--json", "--limit", "5", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["created"], data["completed"]) == (24, 5)
    assert data["counts"] == {"COMPLETED": 5, "PENDING": 19}


def _in_progress(path: Path) -> int:
    """Batches IN_PROGRESS in the state file (0 while it or its table does not exist yet)."""
    try:
        with closing(sqlite3.connect(path, timeout=5)) as conn:
            return int(
                conn.execute(
                    "SELECT count(*) FROM pipeline_state WHERE pipeline_status = 'IN_PROGRESS'"
                ).fetchone()[0]
            )
    except sqlite3.Error:
        return 0


def test_sigterm_lets_workers_finish_their_batch(tmp_path: Path) -> None:
    config = _config(tmp_path, 1.5)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "integration")}
    process = subprocess.Popen(
        [PIPESTATE, "run", "--workers", "2", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    # Once the workers have started and hold a batch (not after a fixed sleep: on a
    # loaded machine spawning them can take longer than a batch).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _in_progress(tmp_path / "state.db"):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    check = subprocess.run(
        [PIPESTATE, "status", "--json", "--config", str(config)], capture_output=True, text=True, env=env
    )
    counts = json.loads(check.stdout)["counts"]
    assert counts["IN_PROGRESS"] == 0, "a worker stopped in the middle of a batch"
    assert counts["COMPLETED"] >= 1 and counts["PENDING"] >= 1, counts
