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


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PIPESTATE_")}
    environment["PATH"] = f"{BIN}:{environment.get('PATH', '')}"
    return subprocess.run(
        ["sh", "-c", command], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )


def test_the_cron_line_runs_from_the_home_folder(tmp_path: Path) -> None:
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
    summary = json.loads(log.read_text())
    assert (summary["completed"], summary["ok"]) == (4, True)
    assert list(home.iterdir()) == []
    assert (config.parent / "state.db").exists() and (config.parent / "target.db").exists()


def test_the_cronjob_command_runs_as_the_container_would(tmp_path: Path) -> None:
    match = re.search(r"^\s+command: (\[.*\])$", DOC, re.MULTILINE)
    assert match, "the CronJob example has a command line"
    argv = json.loads(match.group(1))
    config = project(tmp_path)
    argv = [str(config) if arg == "/etc/pipestate/pipestate.toml" else arg for arg in argv]
    done = shell(" ".join(argv), cwd=Path("/"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["completed"] == 4
