"""The cron and Kubernetes CronJob examples of docs/orchestrators.md, run as written.

Only the config path (and the log file) are replaced by a test project's; the
command runs from another folder, as cron and a container do.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "orchestrators.md").read_text(encoding="utf-8")
BIN = str(Path(sys.executable).parent)

CONFIG = """\
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
url = "stage"

[target]
type = "sql"
url = "sqlite:///target.db"
table = "events"
time_field = "timestamp"
"""


def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    (folder / "events").mkdir(parents=True)
    (folder / "events" / "e.ndjson").write_text('{"timestamp": "2026-01-01T07:00:00+00:00"}\n')
    (folder / "pipestate.toml").write_text(CONFIG, encoding="utf-8")
    return folder / "pipestate.toml"


def shell(command: str, cwd: Path, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`command` the way cron runs it: `env -i` (only PATH, HOME, SHELL, LOGNAME), `sh -c`,
    no terminal on stdin, stdout or stderr."""
    environment = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(home or cwd),
        "SHELL": "/bin/sh",
        "LOGNAME": "cron",
    }
    if "PYTHONPATH" in os.environ:  # a checkout tested against a shared venv: keep its code
        environment["PYTHONPATH"] = os.environ["PYTHONPATH"]
    assignments = [f"{name}={value}" for name, value in environment.items()]
    return subprocess.run(
        ["env", "-i", *assignments, "sh", "-c", command],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cron_line_writes_json_lines_and_mails_only_on_failure(tmp_path: Path) -> None:
    line = next(row for row in DOC.splitlines() if row.startswith("*/15 * * * *"))
    command = line.split(None, 5)[5]
    config = project(tmp_path)
    log = tmp_path / "orders.jsonl"
    command = command.replace("/opt/pipelines/orders/pipestate.toml", str(config))
    command = command.replace("/var/log/pipestate-orders.jsonl", str(log))
    home = tmp_path / "home"
    home.mkdir()
    done = shell(command, cwd=home)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")  # nothing for cron to mail
    again = shell(command, cwd=home)  # the next quarter hour: nothing left to do
    assert again.returncode == 0 and (again.stdout, again.stderr) == ("", "")
    runs = [json.loads(row) for row in log.read_text().splitlines()]  # JSON Lines: one object a run
    assert [(run["completed"], run["ok"]) for run in runs] == [(4, True), (0, True)]
    assert list(home.iterdir()) == []
    assert (config.parent / "state.db").exists() and (config.parent / "target.db").exists()
    # A failing run: the mail is the one line that says what failed.
    (config.parent / "events" / "e.ndjson").unlink()
    (config.parent / "events").rmdir()
    failed = shell(command, cwd=home)
    assert failed.returncode == 2
    assert failed.stdout == "" and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert "events" in failed.stderr


def test_the_cronjob_command_logs_json_lines_as_the_container_would(tmp_path: Path) -> None:
    match = re.search(r"^\s+command: (\[.*\])$", DOC, re.MULTILINE)
    assert match, "the CronJob example has a command line"
    argv = json.loads(match.group(1))
    config = project(tmp_path)
    argv = [str(config) if arg == "/etc/pipestate/pipestate.toml" else arg for arg in argv]
    done = shell(" ".join(argv), cwd=Path("/"), home=tmp_path)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert json.loads(line)["completed"] == 4
    assert all(json.loads(row) for row in done.stderr.splitlines())  # the pod log: JSON Lines
    (config.parent / "events" / "e.ndjson").unlink()
    (config.parent / "events").rmdir()
    failed = shell(" ".join(argv), cwd=Path("/"), home=tmp_path)
    assert failed.returncode == 2
    (error,) = [json.loads(row) for row in failed.stderr.splitlines()]
    assert error["level"] == "error" and "ts" in error and "events" in error["message"]


def test_progress_only_on_a_terminal_unless_asked(tmp_path: Path) -> None:
    config = project(tmp_path)
    quiet = shell(f"pipestate --config {config} run --json", cwd=tmp_path)
    assert quiet.returncode == 0 and "progress" not in quiet.stderr, quiet.stderr
    (config.parent / "state.db").unlink()
    asked = shell(f"pipestate --config {config} run --json --progress", cwd=tmp_path)
    assert asked.returncode == 0 and "progress: " in asked.stderr, asked.stderr
    assert len(asked.stdout.splitlines()) == 1  # stdout stays the one JSON line
