"""docs/adopting.md, step by step, on a table another tool wrote (SQLite)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

PIPESTATE = str(Path(sys.executable).with_name("pipestate"))

CONFIG = """\
[pipeline]
name = "orders"
granularity = "1h"
start = "2026-01-01"
end = "2026-01-02"

[state]
url = "sqlite:///legacy.db"
table = "jobs"
status_map = { SUCCESS = "COMPLETED", completed = "COMPLETED", waiting = "PENDING", error = "FAILED" }
"""

RENAMES = [
    ("job_id", "batch_id"),
    ("pipeline", "pipeline_name"),
    ("window_start", "source_query_window_start_time"),
    ("window_end", "source_query_window_end_time"),
    ("minutes", "source_query_window_duration_minutes"),
    ("state", "pipeline_status"),
    ("created", "created_at"),
    ("modified", "updated_at"),
]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PIPESTATE_")}
    return subprocess.run(
        [PIPESTATE, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def legacy_table(path: Path) -> None:
    """24 hourly rows: 00-11 SUCCESS/completed, 12-19 waiting, 20-22 error, and 23:00 with
    its end before its start; plus a newer waiting row overlapping 05:00-06:00."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, window_start TEXT NOT NULL,"
            " window_end TEXT NOT NULL, minutes INTEGER NOT NULL, state TEXT NOT NULL,"
            " created TEXT NOT NULL, modified TEXT NOT NULL, owner TEXT)"
        )
        rows = []
        for hour in range(24):
            status = (
                "SUCCESS" if hour < 6 else "completed" if hour < 12 else "waiting" if hour < 20 else "error"
            )
            end = f"2026-01-01 {hour + 1:02d}:00:00" if hour < 23 else "2026-01-01 22:00:00"
            rows.append((f"job-{hour:02d}", "orders", f"2026-01-01 {hour:02d}:00:00", end, 60, status))
        rows.append(("job-late", "orders", "2026-01-01 05:30:00", "2026-01-01 06:30:00", 60, "waiting"))
        conn.executemany(
            "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, '2025-12-31 00:00:00', '2026-01-05 00:00:00', 'etl')",
            rows,
        )


def test_adopting_a_legacy_table_keeps_every_finished_window(tmp_path: Path) -> None:
    legacy_table(tmp_path / "legacy.db")
    (tmp_path / "pipestate.toml").write_text(CONFIG, encoding="utf-8")
    # 1. column names, in SQL
    with sqlite3.connect(tmp_path / "legacy.db") as conn:
        for old, new in RENAMES:
            conn.execute(f"ALTER TABLE jobs RENAME COLUMN {old} TO {new}")
    # 2. the status map is in the config; a first look works before any column is added
    before = run("populate", "--dry-run", "--json", cwd=tmp_path)
    assert before.returncode == 0, before.stderr
    overlaps = json.loads(before.stdout)["overlaps"]
    assert [(o["kept"], o["superseded"]) for o in overlaps] == [("job-05", "job-late")]
    # 3. the optional columns; no row changes
    init = run("init-db", cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    assert "added column retry_count" in init.stdout
    # 4. look before writing: the finished window wins its overlap; 23:00 is invalid
    dry = run("populate", "--dry-run", "--json", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert [(o["kept"], o["superseded"]) for o in plan["overlaps"]] == [("job-05", "job-late")]
    assert [row["batch_id"] for row in plan["invalid_rows"]] == ["job-23"]
    assert run("validate", cwd=tmp_path).returncode == 1
    # 5. the row no map can repair
    quarantined = run("quarantine", "job-23", "--reason", "end before start", cwd=tmp_path)
    assert quarantined.returncode == 0, quarantined.stderr
    # 6. populate, and the table is clean; nothing finished was lost
    done = run("populate", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [entry["batch_id"] for entry in report["superseded"]] == ["job-late"]
    assert [(entry["start"], entry["end"]) for entry in report["created"]] == [
        ("2026-01-01T23:00:00+00:00", "2026-01-02T00:00:00+00:00")
    ]
    assert run("validate", "--require-coverage", cwd=tmp_path).returncode == 0
    status = json.loads(run("status", "--json", cwd=tmp_path).stdout)
    assert (status["counts"]["COMPLETED"], status["counts"]["PENDING"], status["counts"]["FAILED"]) == (
        12,
        9,
        3,
    )
    with sqlite3.connect(tmp_path / "legacy.db") as conn:
        kept = dict(
            conn.execute("SELECT batch_id, pipeline_status FROM jobs WHERE batch_id IN ('job-00', 'job-06')")
        )
        owner = conn.execute("SELECT DISTINCT owner FROM jobs WHERE batch_id LIKE 'job-%'").fetchall()
    assert kept == {"job-00": "SUCCESS", "job-06": "completed"}  # untouched rows keep their own names
    assert owner == [("etl",)]  # and their own columns


def test_read_only_commands_work_before_init_db_and_history_points_to_it(tmp_path: Path) -> None:
    # An adopted table with only the contract's core columns: a look is not an error to retry.
    legacy_table(tmp_path / "legacy.db")
    (tmp_path / "pipestate.toml").write_text(CONFIG, encoding="utf-8")
    with sqlite3.connect(tmp_path / "legacy.db") as conn:
        for old, new in RENAMES:
            conn.execute(f"ALTER TABLE jobs RENAME COLUMN {old} TO {new}")
    for args in (
        ("status",),
        ("status", "--json"),
        ("windows", "--date", "2026-01-01"),
        ("windows", "--date", "2026-01-01", "--json"),
        ("report", "--html", str(tmp_path / "report.html")),
        ("metrics",),
    ):
        result = run(*args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
        assert "None" not in result.stdout or "--json" in args, (args, result.stdout)
    counts = json.loads(run("status", "--json", cwd=tmp_path).stdout)["counts"]
    assert counts["COMPLETED"] == 12 and counts["FAILED"] == 4
    history = run("history", "job-01", cwd=tmp_path)
    assert history.returncode == 2 and "init-db" in history.stderr, history.stderr
    assert len(history.stderr.strip().splitlines()) == 1
    # nothing was written: the table still lacks the optional columns
    with sqlite3.connect(tmp_path / "legacy.db") as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    assert "retry_count" not in columns
