"""Issue 24 through the real command: one meaning of a date, the replay clock, regrid, and
output for machines (one-line JSON, JSON log lines, no progress off a terminal)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

from pipestate.windows import day_bounds, zone

PIPESTATE = str(Path(sys.executable).with_name("pipestate"))
BERLIN = zone("Europe/Berlin")

CONFIG = """\
[pipeline]
name = "orders"
timezone = "Europe/Berlin"
granularity = "1h"
start = "{start}"
{end}

[state]
url = "sqlite:///state.db"
"""


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PIPESTATE_")}
    environment.update(env or {})
    return subprocess.run(
        [PIPESTATE, *args],
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = run(*args, cwd=cwd, env=env)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout


def project(folder: Path, start: str, end: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = CONFIG.format(start=start, end=f'end = "{end}"' if end else "")
    (folder / "pipestate.toml").write_text(text, encoding="utf-8")
    return folder


def test_requeue_start_means_the_same_local_day_as_windows_date(tmp_path: Path) -> None:
    # 2026-03-29 is 23 hours long in Berlin: a UTC reading took 24 windows, the wrong ones.
    folder = project(tmp_path, "2026-03-28", "2026-03-31")
    ok("populate", cwd=folder)
    listed = json.loads(ok("windows", "--date", "2026-03-29", "--json", cwd=folder))
    day = {w["batch_id"] for w in listed["windows"]}
    assert len(day) == 23
    by_range = json.loads(
        ok(
            "requeue",
            "--status",
            "PENDING",
            "--start",
            "2026-03-29",
            "--end",
            "2026-03-30",
            "--json",
            cwd=folder,
        )
    )
    assert set(by_range["requeued"]) == day
    by_date = json.loads(ok("requeue", "--status", "PENDING", "--date", "2026-03-29", "--json", cwd=folder))
    assert set(by_date["requeued"]) == day
    instant = json.loads(
        ok(
            "requeue",
            "--status",
            "PENDING",
            "--start",
            "2026-03-29T12:00Z",
            "--end",
            "2026-03-29T14:00+00:00",
            "--json",
            cwd=folder,
        )
    )
    assert len(instant["requeued"]) == 2  # an offset is that instant
    for command in ("requeue", "windows", "regrid"):
        assert "local day YYYY-MM-DD of the pipeline's zone" in " ".join(
            ok(command, "--help", cwd=folder).split()
        )


# Future DST days, reached through the replay clock: (local day, its hours in Berlin).
FUTURE_DST = [
    ("2027-03-28", 23),
    ("2027-10-31", 25),
    ("2028-03-26", 23),
    ("2029-10-28", 25),
    ("2030-03-31", 23),
]


@pytest.mark.parametrize(("day", "hours"), FUTURE_DST)
def test_the_replay_clock_plans_future_dst_days(tmp_path: Path, day: str, hours: int) -> None:
    local = date.fromisoformat(day)
    folder = project(tmp_path, (local - timedelta(days=1)).isoformat(), None)
    now = (local + timedelta(days=1)).isoformat()  # the next local midnight: the day is over
    created = json.loads(ok("populate", "--now", now, "--json", cwd=folder))["created"]
    assert len(created) == 24 + hours  # the day before, and the DST day
    listed = json.loads(ok("windows", "--date", day, "--json", cwd=folder, env={"PIPESTATE_NOW": now}))
    assert listed["total"] == hours
    low, high = day_bounds(local, BERLIN)
    assert (listed["windows"][0]["start"], listed["windows"][-1]["end"]) == (
        low.isoformat(),
        high.isoformat(),
    )
    status = json.loads(ok("status", "--json", "--no-calendar", "--now", now, cwd=folder))
    assert status["now"] == high.isoformat() and status["coverage"]["percent"] == 100.0
    assert json.loads(ok("populate", "--now", now, "--json", cwd=folder))["created"] == []  # idempotent
    assert run("validate", "--now", now, cwd=folder).returncode == 0


def test_commands_that_hold_leases_refuse_the_replay_clock(tmp_path: Path) -> None:
    folder = project(tmp_path, "2026-01-01", "2026-01-02")
    ok("populate", cwd=folder)
    for args in (
        ("claim", "--worker", "w"),
        ("heartbeat", "b", "--worker", "w"),
        ("complete", "b", "--worker", "w"),
        ("fail", "b", "--worker", "w", "--error", "x"),
        ("run",),
    ):
        flagged = run(*args, "--now", "2026-01-01T05:00Z", cwd=folder)
        assert flagged.returncode == 2 and "--now: " in flagged.stderr, (args, flagged.stderr)
        from_env = run(*args, cwd=folder, env={"PIPESTATE_NOW": "2026-01-01T05:00Z"})
        assert from_env.returncode == 2 and "PIPESTATE_NOW: " in from_env.stderr, (args, from_env.stderr)
    assert json.loads(ok("claim", "--worker", "w", "--json", cwd=folder))["batch"] is not None


def test_regrid_dry_run_shows_each_local_day_before_and_after_and_writes_nothing(tmp_path: Path) -> None:
    folder = project(tmp_path, "2026-03-28", "2026-03-30")
    ok("populate", cwd=folder)
    look = ("windows", "--start", "2026-03-28", "--end", "2026-03-30", "--json", "--now", "2026-04-01")
    before = ok(*look, cwd=folder)
    dry = json.loads(ok("regrid", "--granularity", "2h", "--dry-run", "--json", cwd=folder))
    assert [d["date"] for d in dry["days"]] == ["2026-03-28", "2026-03-29"]
    assert [(len(d["before"]), len(d["after"])) for d in dry["days"]] == [(24, 12), (23, 12)]
    assert ok(*look, cwd=folder) == before
    text = ok("regrid", "--granularity", "2h", "--dry-run", cwd=folder)
    assert "2026-03-29" in text and "before  23 window(s)" in text and "after   12 window(s)" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    done = json.loads(ok("regrid", "--granularity", "2h", "--start", "2026-03-29", "--json", cwd=folder))
    assert [d["date"] for d in done["days"]] == ["2026-03-29"] and len(done["superseded"]) == 23
    assert json.loads(ok("populate", "--json", cwd=folder))["created"] == []  # config still says 1h
    bad = run("regrid", "--granularity", "7x", cwd=folder)
    assert bad.returncode == 2 and bad.stderr.startswith("pipestate: error: --granularity: ")


def test_json_is_one_line_pretty_on_request_and_logs_are_json_lines(tmp_path: Path) -> None:
    folder = project(tmp_path, "2026-01-01", "2026-01-02")
    for args in (("populate", "--json"), ("status", "--json"), ("validate", "--json"), ("metrics", "--json")):
        out = ok(*args, cwd=folder)
        assert len(out.splitlines()) == 1 and json.loads(out), args
    pretty = ok("status", "--json", "--pretty", cwd=folder)
    assert len(pretty.splitlines()) > 5 and json.loads(pretty)
    failed = run("--log-format", "json", "claim", "--worker", "w", "--config", "missing.toml", cwd=folder)
    (line,) = failed.stderr.splitlines()
    record = json.loads(line)
    assert failed.returncode == 2 and record["level"] == "error" and {"ts", "message"} <= set(record)
