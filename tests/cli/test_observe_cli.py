"""status's calendar, windows, metrics and report --html as a person meets them:
through subprocess, on a real terminal (a pty), and in a real headless Chromium."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipestate.manager import PipelineStateManager

PIPESTATE = str(Path(sys.executable).with_name("pipestate"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")

CONFIG = """\
[pipeline]
name = "orders"
timezone = "America/New_York"
granularity = "6h"
start = "2026-03-02"
end = "2026-03-10"

[state]
url = "sqlite:///{db}"

[concurrency]
max_retries = 1
"""


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PIPESTATE_") and k != "NO_COLOR"}
    environment.update(env or {})
    return subprocess.run(
        [PIPESTATE, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def ok(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = run(*args, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def on_a_terminal(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run pipestate with stdout on a pseudo-terminal, as in a shell; return what it printed."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PIPESTATE_") and k != "NO_COLOR"}
    environment.update({"TERM": "xterm-256color", "COLUMNS": "120"}, **(env or {}))
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [PIPESTATE, *args], cwd=cwd, env=environment, stdout=follower, stderr=follower, close_fds=True
    )
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            process.kill()
            raise AssertionError("no output from pipestate within 60 s")
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert process.wait(timeout=60) == 0
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline across the 2026-03-08 DST change with days in each state."""
    folder = tmp_path_factory.mktemp("observe")
    (folder / "pipestate.toml").write_text(CONFIG.format(db=folder / "state.db"))
    # set up through the library (the commands under test run as subprocesses)
    with PipelineStateManager(folder / "pipestate.toml") as manager:
        manager.populate_pipeline_batches()
        for _ in range(8):  # 03-02 .. 03-03 completed
            batch = manager.claim("w1")
            manager.complete(batch.batch_id, "w1")
        batch = manager.claim("w1")  # then one failed for good (max_retries 1)
        manager.fail(batch.batch_id, "w1", "HTTP 503 <script>x</script>")
    return folder


def test_status_prints_a_plain_calendar_when_not_a_terminal(project):
    out = ok("status", cwd=project)
    assert not ANSI.search(out)
    assert "calendar   2026-03-02 .. 2026-03-09, local days in America/New_York" in out
    assert "Mo  Tu  We  Th  Fr  Sa  Su" in out
    assert " 2#  3#  4X  5.  6.  7.  8." in out  # completed, completed, failed for good, pending...
    assert "X failed 1   ! gap 0   + in progress 0   . pending 5   # completed 2" in out


def test_status_colours_the_calendar_on_a_terminal_and_respects_no_color(project):
    coloured = on_a_terminal("status", cwd=project)
    assert ANSI.search(coloured)
    assert "\x1b[" in coloured and "41m" in coloured  # red background: the failed day
    plain = ANSI.sub("", coloured)
    assert "2026-03-02   2   3   4   5   6   7   8" in plain
    no_color = on_a_terminal("status", cwd=project, env={"NO_COLOR": "1"})
    assert not ANSI.search(no_color)
    assert " 2#  3#  4X" in no_color


def test_status_json_has_the_same_days(project):
    data = json.loads(ok("status", "--json", cwd=project))
    calendar = data["calendar"]
    assert calendar["timezone"] == "America/New_York"
    assert calendar["day_totals"] == {
        "failed": 1,
        "gap": 0,
        "in_progress": 0,
        "pending": 5,
        "completed": 2,
        "outside": 0,
    }
    days = {day["date"]: day for day in calendar["days"]}
    assert days["2026-03-08"]["expected_minutes"] == 23 * 60
    assert days["2026-03-08"]["start"] == "2026-03-08T05:00:00+00:00"
    assert days["2026-03-04"]["state"] == "failed"
    assert days["2026-03-04"]["counts"]["FAILED"] == 1
    assert "calendar" not in json.loads(ok("status", "--json", "--no-calendar", cwd=project))


def test_windows_lists_a_local_day_with_local_and_utc_times(project):
    out = ok("windows", "--date", "2026-03-08", cwd=project)
    lines = out.splitlines()
    assert lines[0].startswith(
        "pipeline orders: 4 window(s) starting 2026-03-08 00:00 EST .. 2026-03-09 00:00 EDT"
    )
    # DST: 6 hours later in absolute time
    assert re.search(r"2026-03-08 00:00 EST 07:00 EDT +03-08 05:00 +6h00  PENDING", out)
    assert "19:00 EDT 24:00 EDT" in out  # the day's last window ends at its midnight
    assert max(len(line) for line in lines) <= 100
    failed = ok("windows", "--start", "2026-03-04", "--end", "2026-03-05", "--status", "FAILED", cwd=project)
    assert "FAILED" in failed and "last error: HTTP 503 <script>x</script>" in failed
    data = json.loads(ok("windows", "--date", "2026-03-04", "--json", cwd=project))
    assert data["total"] == 4
    first = data["windows"][0]
    assert first["start"] == "2026-03-04T05:00:00+00:00"
    assert first["local_start"] == "2026-03-04T00:00:00"
    assert (first["status"], first["retry_count"], first["worker_id"]) == ("FAILED", 1, "w1")


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (("--date", "2026-13-01"), "--date"),
        (("--date", "2026-03-01T00:00"), "--date"),
        (("--start", "yesterday"), "--start"),
        (("--start", "2026-03-05", "--end", "2026-03-04"), "--end"),
        (("--date", "2026-03-04", "--start", "2026-03-04"), "not both"),
    ],
)
def test_windows_bad_arguments_are_one_line_errors(project, args, hint):
    result = run("windows", *args, cwd=project)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and hint in result.stderr


def test_metrics_are_prometheus_text_with_freshness(project):
    out = ok("metrics", cwd=project)
    families = {family.name: family for family in text_string_to_metric_families(out)}
    windows = {s.labels["status"]: s.value for s in families["pipestate_windows"].samples}
    assert windows == {"PENDING": 23, "IN_PROGRESS": 0, "COMPLETED": 8, "FAILED": 1, "SUPERSEDED": 0}
    assert families["pipestate_failed_permanently_windows"].samples[0].value == 1
    assert families["pipestate_stuck_leases"].samples[0].value == 0
    until = families["pipestate_complete_until_timestamp_seconds"].samples[0]
    assert until.labels == {"pipeline": "orders"}
    assert until.value == 1772600400  # 2026-03-04T05:00:00Z: the end of the last completed window
    # The range ended (2026-03-10 local, 04:00 UTC): freshness counts to its end, not to now.
    assert families["pipestate_freshness_seconds"].samples[0].value == 1773115200 - until.value
    assert families["pipestate_oldest_pending_age_seconds"].samples[0].value > 0
    openmetrics = ok("metrics", "--openmetrics", cwd=project)
    assert openmetrics.rstrip().endswith("# EOF")
    data = json.loads(ok("metrics", "--json", cwd=project))
    assert data["complete_until"] == "2026-03-04T05:00:00+00:00"
    assert data["windows"]["FAILED"] == 1


def test_metrics_output_is_written_whole_for_the_textfile_collector(project, tmp_path):
    target = tmp_path / "pipestate.prom"
    assert ok("metrics", "--output", str(target), cwd=project) == ""
    assert "pipestate_freshness_seconds" in target.read_text()
    assert not list(tmp_path.glob(".*.tmp"))
    result = run("metrics", "--output", str(tmp_path / "missing" / "x.prom"), cwd=project)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_report_is_one_self_contained_file(project, tmp_path):
    page = tmp_path / "report.html"
    out = ok("report", "--html", str(page), cwd=project)
    assert out.startswith(f"wrote {page}")
    text = page.read_text()
    # nothing from the network: no external scripts, styles, images or fonts
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "@import" not in text and "url(" not in text
    assert "<script>x</script>" not in text and "HTTP 503 &lt;script&gt;x&lt;/script&gt;" in text
    assert re.search(r'<rect [^>]*class="s-failed" data-date="2026-03-04"', text)
    assert len(re.findall(r'class="s-completed" data-date="2026-03-0[23]"', text)) == 2
    data = json.loads(ok("report", "--html", str(page), "--json", cwd=project))
    assert data["html"] == str(page) and data["bytes"] == len(page.read_bytes())
    result = run("report", "--html", str(tmp_path / "missing" / "r.html"), cwd=project)
    assert result.returncode == 2 and "--html" in result.stderr


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _browser(*args: str) -> subprocess.CompletedProcess[str]:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_report_renders_in_a_real_browser(project, tmp_path):
    page = tmp_path / "report.html"
    ok("report", "--html", str(page), cwd=project)
    # --dump-dom prints the DOM after the page's script ran: the heatmap was drawn
    dom = _browser("--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr
    html = dom.stdout
    assert 'id="heatmap" height="' in html and 'data-drawn="8"' in html
    assert re.search(r'<b data-state="failed">1</b>', html)
    assert re.search(r'<b data-state="completed">2</b>', html)
    assert re.search(r'<b data-status="COMPLETED">8</b>', html)
    assert "HTTP 503 &lt;script&gt;x&lt;/script&gt;" in html
    shot = tmp_path / "report.png"
    taken = _browser("--window-size=1280,1600", f"--screenshot={shot}", page.as_uri())
    assert taken.returncode == 0, taken.stderr
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_text_outputs_show_local_times_beside_utc_and_json_stays_utc(project, tmp_path):
    populate = ok("populate", "--dry-run", cwd=project)
    utc_range = "2026-03-02T05:00:00+00:00 .. 2026-03-10T04:00:00+00:00"
    assert f"{utc_range} (local 2026-03-02 00:00 EST .. 2026-03-10 00:00 EDT)" in populate
    assert "2026-03-02T05:00:00+00:00 (2026-03-02 00:00 EST)" in populate
    validate = ok("validate", cwd=project)
    assert "(local 2026-03-02 00:00 EST .. 2026-03-10 00:00 EDT)" in validate
    status = ok("status", "--no-calendar", cwd=project)
    assert "window start 2026-03-04 06:00 EST (UTC 03-04 11:00)" in status
    assert (
        "range      2026-03-02 00:00 EST .. 2026-03-10 00:00 EDT (UTC 03-02 05:00 .. 03-10 04:00)" in status
    )
    assert re.search(r"coverage   [0-9.]+% \([0-9,]+ of [0-9,]+ min\)", status)
    assert re.search(r"\(now \S+:\d\d\+00:00, local \d{4}-\d\d-\d\d \d\d:\d\d E[SD]T\)", status)
    assert "." not in status.splitlines()[0]  # no microseconds for people
    assert max(len(line) for line in status.splitlines()) <= 100
    failed = json.loads(ok("windows", "--date", "2026-03-04", "--status", "FAILED", "--json", cwd=project))
    history = ok("history", failed["windows"][0]["batch_id"], cwd=project)
    assert re.search(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d E[SD]T \(\d\d:\d\d:\d\d UTC\)  CREATED ", history, re.M
    )
    assert max(len(line) for line in history.splitlines()) <= 100 and "None" not in history
    # JSON keeps UTC instants only
    for command in (("populate", "--dry-run", "--json"), ("validate", "--json"), ("status", "--json")):
        text = run(*command, cwd=project).stdout
        assert " EST" not in text and " EDT" not in text and "local " not in text
    events = json.loads(ok("history", failed["windows"][0]["batch_id"], "--json", cwd=project))["events"]
    assert all(event["event_time"].endswith("+00:00") for event in events)
    # a UTC pipeline's text says each instant once
    (tmp_path / "pipestate.toml").write_text(
        CONFIG.format(db=tmp_path / "state.db").replace("America/New_York", "UTC")
    )
    assert "(local" not in ok("populate", "--dry-run", cwd=tmp_path)
