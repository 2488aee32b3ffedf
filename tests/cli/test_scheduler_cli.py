"""What a scheduler relies on, through the real command: exit codes, --debug, missing tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import support

PIPESTATE = str(Path(sys.executable).with_name("pipestate"))

CONFIG = """\
[pipeline]
name = "orders"
timezone = "UTC"
granularity = "6h"
start = "2026-01-01"
end = "{end}"

[state]
url = "{url}"
table = "{table}"

[concurrency]
max_retries = 1
retry_backoff = "0s"
"""

SOURCE = """
[source]
type = "files"
path = "{folder}/source"
time_field = "timestamp"

[stage]
type = "local"
url = "{folder}/stage"

[target]
type = "sql"
url = "sqlite:///{folder}/target.db"
table = "events"
time_field = "timestamp"
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PIPESTATE_")}
    return subprocess.run(
        [PIPESTATE, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def write_config(
    folder: Path,
    *,
    url: str | None = None,
    table: str = "pipeline_state",
    end: str = "2026-01-03",
    source: bool = False,
) -> Path:
    text = CONFIG.format(end=end, url=url or f"sqlite:///{folder / 'state.db'}", table=table)
    if source:
        text += SOURCE.format(folder=folder)
    path = folder / "pipestate.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_plain_pipestate_prints_the_help(tmp_path: Path) -> None:
    result = run(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage: pipestate" in result.stdout and "populate" in result.stdout
    assert "5 run finished but a batch of it ended FAILED" in " ".join(result.stdout.split())


def test_run_exits_5_naming_the_batches_that_ended_failed(tmp_path: Path) -> None:
    write_config(tmp_path, source=True)
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "events.ndjson").write_text("not JSON\n", encoding="utf-8")
    result = run("run", cwd=tmp_path)
    assert result.returncode == 5, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pipestate: 8 batch(es) ended FAILED: orders-20260101T000000Z-20260101T060000Z, ")
    assert "(exit 5;" in last
    # --json says which, too; a second run has nothing left to claim (max_retries = 1) and succeeds.
    again = run("run", "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["ok"] is True


def test_run_json_lists_failed_batches(tmp_path: Path) -> None:
    write_config(tmp_path, source=True)
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "events.ndjson").write_text("not JSON\n", encoding="utf-8")
    result = run("run", "--json", "--limit", "2", cwd=tmp_path)
    assert result.returncode == 5
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert data["failed_batches"] == [
        "orders-20260101T000000Z-20260101T060000Z",
        "orders-20260101T060000Z-20260101T120000Z",
    ]
    assert data["lost_batches"] == []


def test_debug_adds_a_traceback_and_keeps_the_exit_code(tmp_path: Path) -> None:
    (tmp_path / "pipestate.toml").write_text('[pipeline]\nname = "x"\nstart = "2026-01-01"\nspeed = 1\n')
    plain = run("populate", cwd=tmp_path)
    debug = run("--debug", "populate", cwd=tmp_path)
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()
    write_config(tmp_path)
    missing = run("status", "--debug", cwd=tmp_path)
    assert missing.returncode == 3 and "Traceback" in missing.stderr


def test_validate_and_dry_runs_create_no_file_and_validate_fails_without_a_table(tmp_path: Path) -> None:
    write_config(tmp_path)
    dry = run("populate", "--dry-run", "--json", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    result = run("validate", cwd=tmp_path)
    assert result.returncode == 1
    assert "the state table does not exist" in result.stderr.strip().splitlines()[-1]
    as_json = run("validate", "--json", cwd=tmp_path)
    assert as_json.returncode == 1
    data = json.loads(as_json.stdout)
    assert (data["ok"], data["table_exists"]) == (False, False)
    status = run("status", cwd=tmp_path)
    assert status.returncode == 3
    assert "does not exist" in status.stderr
    assert not (tmp_path / "state.db").exists()


@pytest.mark.parametrize("command", [["claim", "--worker", "w"], ["history", "some-batch"]])
def test_commands_on_a_missing_table_say_so_in_one_line(tmp_path: Path, command: list[str]) -> None:
    write_config(tmp_path)
    result = run(*command, cwd=tmp_path)
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1
    assert "state table pipeline_state does not exist" in result.stderr
    assert "no such table" not in result.stderr


def test_history_on_a_database_without_the_table_is_a_one_line_error(tmp_path: Path) -> None:
    import sqlite3

    sqlite3.connect(tmp_path / "state.db").close()  # a file, but not our table
    write_config(tmp_path)
    result = run("history", "b1", cwd=tmp_path)
    assert result.returncode == 3
    assert "state table pipeline_state does not exist; run 'pipestate init-db'" in result.stderr


def test_validate_require_coverage_fails_until_populate_covers_the_range(tmp_path: Path) -> None:
    write_config(tmp_path, end="2026-01-02")
    assert run("populate", cwd=tmp_path).returncode == 0
    write_config(tmp_path, end="2026-01-03")  # the range grew: no gap, but a day without windows
    assert run("validate", cwd=tmp_path).returncode == 0
    uncovered = run("validate", "--require-coverage", "--json", cwd=tmp_path)
    assert uncovered.returncode == 1
    assert json.loads(uncovered.stdout)["problems"] == [
        "1440 min of the range not covered by any window (run populate)"
    ]
    assert run("populate", cwd=tmp_path).returncode == 0
    assert run("validate", "--require-coverage", cwd=tmp_path).returncode == 0


@pytest.mark.postgres
def test_validate_on_postgresql_with_a_wrong_table_name_exits_1(tmp_path: Path) -> None:
    problem = support.pg_reachable(support.PG_URL)
    if problem:
        pytest.skip(problem)
    table = support.unique_table()
    write_config(tmp_path, url=support.PG_URL, table=table)
    result = run("validate", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "the state table does not exist" in result.stderr
    history = run("history", "b1", cwd=tmp_path)
    assert history.returncode == 3
    assert f"state table {table} does not exist" in history.stderr


RELATIVE = """\
[pipeline]
name = "orders"
granularity = "6h"
start = "2026-01-01"
end = "2026-01-02"

[state]
url = "sqlite:///state.db"

[source]
type = "files"
path = "events"
time_field = "timestamp"

[stage]
type = "local"
url = "./stage"

[target]
type = "sql"
url = "sqlite:///target.db"
table = "events"
time_field = "timestamp"
"""


def test_relative_paths_are_relative_to_the_config_file_from_any_folder(tmp_path: Path) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "events").mkdir(parents=True)
    elsewhere.mkdir()
    (project / "events" / "e.ndjson").write_text('{"timestamp": "2026-01-01T01:00:00+00:00"}\n')
    (project / "pipestate.toml").write_text(RELATIVE, encoding="utf-8")
    first = run("--config", "../project/pipestate.toml", "run", "--json", cwd=elsewhere)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["completed"] == 4
    assert sorted(p.name for p in project.iterdir()) == [
        "events",
        "pipestate.toml",
        "stage",
        "state.db",
        "target.db",
    ]
    assert list(elsewhere.iterdir()) == []
    # The same file from its own folder and from the root: the same table, nothing new.
    for folder in (project, Path("/")):
        again = run("populate", "--json", "--config", str(project / "pipestate.toml"), cwd=folder)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["created"] == []


def test_default_stage_and_target_paths_sit_next_to_the_config_file(tmp_path: Path) -> None:
    # No [stage] url and no [target] url: the connectors' defaults (./pipestate-stage and
    # duckdb:///pipestate-target.duckdb) are relative paths too, so they follow the file.
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "events").mkdir(parents=True)
    elsewhere.mkdir()
    (project / "events" / "e.ndjson").write_text('{"timestamp": "2026-01-01T01:00:00+00:00"}\n')
    defaults = RELATIVE.replace('url = "./stage"\n', "").replace('url = "sqlite:///target.db"\n', "")
    (project / "pipestate.toml").write_text(defaults, encoding="utf-8")
    done = run("--config", "../project/pipestate.toml", "run", "--json", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["completed"] == 4
    assert (project / "pipestate-stage").is_dir()
    assert (project / "pipestate-target.duckdb").is_file()
    assert list(elsewhere.iterdir()) == []


def test_a_missing_source_path_is_exit_2_naming_the_resolved_path_with_nothing_written(
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pipestate.toml").write_text(RELATIVE, encoding="utf-8")
    result = run("--config", "project/pipestate.toml", "run", cwd=tmp_path)
    assert result.returncode == 2
    assert f"[source] path: {project / 'events'} does not exist" in result.stderr
    assert not (project / "state.db").exists()


def test_an_unreachable_search_host_is_one_error_before_anything_is_written(tmp_path: Path) -> None:
    write_config(tmp_path)
    with (tmp_path / "pipestate.toml").open("a", encoding="utf-8") as file:
        file.write('\n[source]\ntype = "elasticsearch"\nhosts = ["http://127.0.0.1:9"]\nindex = "x"\n')
    result = run("run", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().splitlines() == [
        "pipestate: error: elasticsearch: Connection error (checked before the run; nothing was written)"
    ]
    assert not (tmp_path / "state.db").exists()


def test_run_without_a_source_writes_nothing(tmp_path: Path) -> None:
    write_config(tmp_path)
    result = run("run", cwd=tmp_path)
    assert result.returncode == 2
    assert "[source] type: required" in result.stderr
    assert not (tmp_path / "state.db").exists()


def test_init_writes_a_file_that_works_from_any_folder(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    (tmp_path / "cron-home").mkdir()
    assert run("init", "--config", "project/pipestate.toml", cwd=tmp_path).returncode == 0
    config = str(tmp_path / "project" / "pipestate.toml")
    done = run("--config", config, "populate", "--json", cwd=tmp_path / "cron-home")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "project" / "pipestate.db").exists()
    assert list((tmp_path / "cron-home").iterdir()) == []


def test_environment_only_paths_are_relative_to_the_current_folder(tmp_path: Path) -> None:
    env = {
        "PIPESTATE_PIPELINE__NAME": "orders",
        "PIPESTATE_PIPELINE__START": "2026-01-01",
        "PIPESTATE_PIPELINE__END": "2026-01-02",
        "PIPESTATE_STATE__URL": "sqlite:///from-env.db",
    }
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PIPESTATE_")} | env
    done = subprocess.run(
        [PIPESTATE, "populate"], cwd=tmp_path, env=environment, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "from-env.db").exists()


def test_quarantine_command(tmp_path: Path) -> None:
    write_config(tmp_path)
    assert run("populate", cwd=tmp_path).returncode == 0
    batch = "orders-20260101T000000Z-20260101T060000Z"
    missing = run("quarantine", "nope", "--reason", "x", cwd=tmp_path)
    assert missing.returncode == 2 and "no such batch in pipeline orders: nope" in missing.stderr
    no_reason = run("quarantine", batch, cwd=tmp_path)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    done = run("quarantine", batch, "--reason", "loaded by hand", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "quarantined": [{"batch_id": batch, "previous_status": "PENDING"}],
        "reason": "loaded by hand",
    }
    history = json.loads(run("history", batch, "--json", cwd=tmp_path).stdout)
    assert history["events"][-1]["event_type"] == "QUARANTINED"
    assert json.loads(history["events"][-1]["details"]) == {"reason": "loaded by hand"}


def test_every_command_takes_json() -> None:
    from pipestate.cli import cli

    assert [
        name for name, command in cli.commands.items() if "as_json" not in {p.name for p in command.params}
    ] == []


def test_the_worker_commands_print_one_json_object(tmp_path: Path) -> None:
    written = run("init", "--json", "--config", str(tmp_path / "p.toml"), cwd=tmp_path)
    assert json.loads(written.stdout) == {"written": str(tmp_path / "p.toml")}
    write_config(tmp_path)
    assert json.loads(run("init-db", "--json", cwd=tmp_path).stdout)["table"] == "pipeline_state"
    assert run("populate", cwd=tmp_path).returncode == 0
    batch = json.loads(run("claim", "--worker", "w", "--json", cwd=tmp_path).stdout)["batch"]
    beat = json.loads(run("heartbeat", batch["batch_id"], "--worker", "w", "--json", cwd=tmp_path).stdout)
    assert beat["lease_expires_at"].endswith("+00:00")
    failed = run("fail", batch["batch_id"], "--worker", "w", "--error", "boom", "--json", cwd=tmp_path)
    assert json.loads(failed.stdout)["status"] == "FAILED"
    again = json.loads(run("claim", "--worker", "w", "--json", cwd=tmp_path).stdout)["batch"]
    released = run("release", again["batch_id"], "--worker", "w", "--json", cwd=tmp_path)
    assert json.loads(released.stdout) == {"batch_id": again["batch_id"], "status": "PENDING"}
    third = json.loads(run("claim", "--worker", "w", "--json", cwd=tmp_path).stdout)["batch"]
    done = run("complete", third["batch_id"], "--worker", "w", "--json", cwd=tmp_path)
    assert json.loads(done.stdout) == {"batch_id": third["batch_id"], "status": "COMPLETED"}


@pytest.mark.duckdb
def test_duckdb_dry_runs_and_validate_create_no_file(tmp_path: Path) -> None:
    pytest.importorskip("duckdb_engine")
    write_config(tmp_path, url="duckdb:///state.duckdb")
    assert run("populate", "--dry-run", cwd=tmp_path).returncode == 0
    assert run("validate", cwd=tmp_path).returncode == 1
    assert run("status", cwd=tmp_path).returncode == 3
    assert not (tmp_path / "state.duckdb").exists()
    assert run("populate", cwd=tmp_path).returncode == 0
    assert (tmp_path / "state.duckdb").exists()  # relative to the config file's folder
