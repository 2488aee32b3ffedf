"""The `pipestate` command through subprocess: exit codes, one-line errors, JSON (contract 1, 2, 5, 6)."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

PIPESTATE = str(Path(sys.executable).with_name("pipestate"))
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")

CONFIG = """\
[pipeline]
name = "orders"
timezone = "UTC"
granularity = "6h"
start = "2026-01-01"
end = "2026-01-03"

[state]
url = "sqlite:///{db}"
table = "pipeline_state"
"""


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PIPESTATE_")}
    environment.update(env or {})
    return subprocess.run(
        [PIPESTATE, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=60, check=False
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pipestate.toml").write_text(CONFIG.format(db=tmp_path / "state.db"))
    return tmp_path


def test_init_writes_a_config_that_works_as_is(tmp_path):
    result = run("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "pipestate.toml").exists()
    dry = run("populate", "--dry-run", "--json", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert not (tmp_path / "pipestate.db").exists() or not _tables(tmp_path / "pipestate.db")
    done = run("populate", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert run("validate", cwd=tmp_path).returncode == 0
    again = run("init", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in one_line_error(again)


def _tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_option_before_or_after_the_subcommand(tmp_path, where):
    config = tmp_path / "elsewhere.toml"
    config.write_text(CONFIG.format(db=tmp_path / "x.db"))
    work = tmp_path / "cwd"
    work.mkdir()
    args = ["--config", str(config), "populate", "--json"]
    if where == "after":
        args = ["populate", "--json", "--config", str(config)]
    result = run(*args, cwd=work)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["created"]) == 8


def test_pipestate_config_env_and_section_override(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(db=tmp_path / "ignored.db"))
    other = tmp_path / "other.db"
    result = run(
        "populate",
        "--json",
        cwd=tmp_path,
        env={"PIPESTATE_CONFIG": str(config), "PIPESTATE_STATE__URL": f"sqlite:///{other}"},
    )
    assert result.returncode == 0, result.stderr
    assert other.exists() and not (tmp_path / "ignored.db").exists()
    assert "pipeline_state" in _tables(other)


def test_unknown_key_exits_2_naming_it_and_writes_nothing(project):
    text = (project / "pipestate.toml").read_text().replace('table = "pipeline_state"', 'tabel = "x"')
    (project / "pipestate.toml").write_text(text)
    for command in (["populate"], ["init-db"]):
        result = run(*command, cwd=project)
        assert result.returncode == 2
        line = one_line_error(result)
        assert "tabel" in line and "unknown" in line
    assert not (project / "state.db").exists()


def test_unknown_env_key_exits_2(project):
    result = run("populate", cwd=project, env={"PIPESTATE_PIPELINE__GRANULARITE": "1h"})
    assert result.returncode == 2 and "granularite" in one_line_error(result)
    assert not (project / "state.db").exists()


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("granularity", '"7x"', "granularity"),
        ("timezone", '"Mars/Olympus"', "timezone"),
        ("start", '"tomorrow"', "start"),
        ("name", '"bad name"', "name"),
    ],
)
def test_bad_values_exit_2_naming_the_key(project, key, value, named):
    path = project / "pipestate.toml"
    lines = [
        f"{key} = {value}" if line.startswith(f"{key} =") else line for line in path.read_text().splitlines()
    ]
    path.write_text("\n".join(lines) + "\n")
    result = run("populate", cwd=project)
    assert result.returncode == 2
    assert named in one_line_error(result)
    assert not (project / "state.db").exists()


@pytest.mark.parametrize("args", [["populate", "--frobnicate"], ["nonsense"], ["populate", "--config"]])
def test_bad_argument_exits_2_with_one_line(project, args):
    result = run(*args, cwd=project)
    assert result.returncode == 2
    one_line_error(result)
    assert not (project / "state.db").exists()


def test_missing_config_file_exits_2(tmp_path):
    result = run("populate", cwd=tmp_path)
    assert result.returncode == 2 and "pipestate.toml" in one_line_error(result)


def test_populate_json_has_every_contract_key(project):
    db = project / "state.db"
    result = run("init-db", cwd=project)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(db) as conn:
        insert = (
            "INSERT INTO pipeline_state (batch_id, pipeline_name, source_query_window_start_time, "
            "source_query_window_end_time, source_query_window_duration_minutes, pipeline_status, "
            "created_at, updated_at) VALUES (?, 'orders', ?, ?, ?, ?, '2025-12-31 00:00:00', ?)"
        )
        conn.execute(
            insert, ("a", "2026-01-01 00:00:00", "2026-01-01 06:00:00", 360, "COMPLETED", "2025-12-31")
        )
        conn.execute(
            insert, ("b", "2026-01-01 03:00:00", "2026-01-01 09:00:00", 360, "PENDING", "2025-12-31")
        )
        conn.execute(
            insert, ("c", "2026-01-01 18:00:00", "2026-01-02 00:00:00", 360, "COMPLETED", "2025-12-31")
        )
        conn.execute(
            insert, ("bad", "2026-01-01 10:00:00", "2026-01-01 09:00:00", 60, "PENDING", "2025-12-31")
        )
    result = run("populate", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["pipeline"] == "orders" and data["dry_run"] is False
    analysis = data["analysis"]
    assert analysis["active_windows"] == 3
    assert analysis["dominant_duration_minutes"] == 360
    assert analysis["duration_distribution"] == {"360": 3}
    assert [(g["kind"], g["start"], g["end"]) for g in data["gaps"]] == [
        ("between_windows", "2026-01-01T09:00:00+00:00", "2026-01-01T18:00:00+00:00")
    ]
    assert [(o["kept"], o["superseded"]) for o in data["overlaps"]] == [("a", "b")]
    assert data["overlaps"][0]["reason"]
    assert [(s["batch_id"], s["superseded_by"]) for s in data["superseded"]] == [("b", "a")]
    assert data["superseded"][0]["reason"]
    assert [i["batch_id"] for i in data["invalid_rows"]] == ["bad"]
    created = data["created"]
    assert [(c["start"], c["end"], c["duration_minutes"], c["record_origin"]) for c in created] == [
        ("2026-01-01T06:00:00+00:00", "2026-01-01T12:00:00+00:00", 360, "GAP_FILL"),
        ("2026-01-01T12:00:00+00:00", "2026-01-01T18:00:00+00:00", 360, "GAP_FILL"),
        ("2026-01-02T00:00:00+00:00", "2026-01-02T06:00:00+00:00", 360, "SCHEDULED"),
        ("2026-01-02T06:00:00+00:00", "2026-01-02T12:00:00+00:00", 360, "SCHEDULED"),
        ("2026-01-02T12:00:00+00:00", "2026-01-02T18:00:00+00:00", 360, "SCHEDULED"),
        ("2026-01-02T18:00:00+00:00", "2026-01-03T00:00:00+00:00", 360, "SCHEDULED"),
    ]
    assert all(c["batch_id"] for c in created)
    for instant in [g[k] for g in data["gaps"] for k in ("start", "end")] + [c["start"] for c in created]:
        assert ISO.match(instant), instant

    dry = json.loads(run("populate", "--dry-run", "--json", cwd=project).stdout)
    assert dry["dry_run"] is True and dry["created"] == [] and dry["overlaps"] == []


def test_validate_exit_codes(project):
    db = project / "state.db"
    assert run("init-db", cwd=project).returncode == 0
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO pipeline_state (batch_id, pipeline_name, source_query_window_start_time, "
            "source_query_window_end_time, source_query_window_duration_minutes, pipeline_status, "
            "created_at, updated_at) VALUES ('x', 'orders', '2026-01-01 00:00:00', '2026-01-01 06:00:00', "
            "360, 'PENDING', '2025-12-31 00:00:00', '2025-12-31 00:00:00'), "
            "('y', 'orders', '2026-01-01 12:00:00', '2026-01-01 18:00:00', 360, 'PENDING', "
            "'2025-12-31 00:00:00', '2025-12-31 00:00:00')"
        )
    found = run("validate", "--json", cwd=project)
    assert found.returncode == 1, found.stderr
    assert json.loads(found.stdout)["gaps"][0]["kind"] == "between_windows"
    with sqlite3.connect(db) as conn:
        before = conn.execute("SELECT count(*) FROM pipeline_state").fetchone()
    assert run("validate", cwd=project).returncode == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM pipeline_state").fetchone() == before
    assert run("populate", cwd=project).returncode == 0
    clean = run("validate", cwd=project)
    assert clean.returncode == 0, clean.stdout + clean.stderr


def test_status_json(project):
    assert run("populate", cwd=project).returncode == 0
    result = run("status", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["pipeline"] == "orders"
    assert data["counts"]["PENDING"] == 8 and data["total_rows"] == 8
    assert data["coverage"]["percent"] == 100.0
    assert data["first_window_start"] == "2026-01-01T00:00:00+00:00"
    assert data["last_window_end"] == "2026-01-03T00:00:00+00:00"
    assert data["oldest_pending"]["start"] == "2026-01-01T00:00:00+00:00"
    assert data["failures"] == []
    text = run("status", cwd=project)
    assert text.returncode == 0 and "orders" in text.stdout


def test_status_names_a_failure_another_tool_wrote_without_an_error_text(project):
    assert run("populate", cwd=project).returncode == 0
    with sqlite3.connect(project / "state.db") as conn:
        conn.execute(
            "UPDATE pipeline_state SET pipeline_status = 'FAILED', retry_count = 9, last_error = NULL "
            "WHERE source_query_window_start_time = '2026-01-01 00:00:00.000000'"
        )
        assert conn.total_changes == 1
    text = run("status", cwd=project)
    assert text.returncode == 0, text.stderr
    assert "(no error recorded)" in text.stdout and ": None" not in text.stdout


def test_status_before_init_db_is_a_one_line_error(project):
    result = run("status", cwd=project)
    assert result.returncode != 0 and "init-db" in one_line_error(result)


def test_help_explains_every_command(tmp_path):
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("init", "init-db", "populate", "validate", "status"):
        assert command in result.stdout
    result = run("populate", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "--dry-run" in result.stdout and "--json" in result.stdout
