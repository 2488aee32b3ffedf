"""Make the pictures of docs/observing.md from a real run of the demo pipeline.

    python scripts/docs_pictures.py [--out docs/images]

Runs the demo (files -> local stage -> DuckDB, SQLite state, America/New_York)
over five weeks of events, processes the first three and a half, then leaves a
day in each state: a window failed for good, one in flight, a window deleted (a
gap), a row from another tool (an overlap). It then writes
  status-calendar.png  `pipestate status` on a terminal (captured through a pty,
                       drawn by rich's SVG export, photographed by Chromium)
  report.png           `pipestate report --html` in headless Chromium
Needs Chromium (`chromium` on Debian).
"""

from __future__ import annotations

import argparse
import io
import os
import pty
import select
import shutil
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    sys.exit("needs Chromium (Debian: apt-get install chromium)")


def _shoot(page: Path, png: Path, width: int, height: int) -> None:
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        "--virtual-time-budget=3000",
        f"--screenshot={png}",
        page.as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True)


def _on_a_terminal(args: list[str], cwd: Path) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    environment.update(TERM="xterm-256color", COLUMNS="132")
    leader, follower = pty.openpty()
    process = subprocess.Popen(args, cwd=cwd, env=environment, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while select.select([leader], [], [], 60)[0]:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    process.wait(timeout=60)
    return b"".join(chunks).decode("utf-8", "replace")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pipestate-pictures-") as tmp:
        folder = Path(tmp)
        config = make_scenario(folder)
        pipestate = str(Path(sys.executable).with_name("pipestate"))
        shown = _on_a_terminal([pipestate, "status", "--config", str(config)], folder)
        from rich.console import Console
        from rich.text import Text

        console = Console(
            record=True, width=132, force_terminal=True, color_system="truecolor", file=io.StringIO()
        )
        console.print(Text.from_ansi("$ pipestate status\n" + shown.replace("\r\n", "\n")))
        svg = folder / "status.svg"
        svg.write_text(console.export_svg(title="pipestate status"), encoding="utf-8")
        page = folder / "status.html"
        page.write_text(
            "<!DOCTYPE html><html><body style='margin:0;background:#fff'>"
            f"<img src='{svg.name}' style='width:1300px'></body></html>",
            encoding="utf-8",
        )
        _shoot(page, args.out / "status-calendar.png", 1300, 600)
        report = folder / "report.html"
        subprocess.run([pipestate, "report", "--html", str(report), "--config", str(config)], check=True)
        _shoot(report, args.out / "report.png", 1280, 2000)
    print(f"wrote {args.out / 'status-calendar.png'} and {args.out / 'report.png'}")


def make_scenario(folder: Path) -> Path:
    """The demo over 35 days, 24 of them processed, and a day in each state."""
    os.environ["PIPESTATE_CONCURRENCY__MAX_RETRIES"] = "2"
    from sqlalchemy import insert

    from pipestate.manager import PipelineStateManager
    from pipestate.run.demo import write_demo
    from pipestate.run.runner import run_pipeline
    from pipestate.windows import day_bounds

    setup = write_demo(folder, days=35, events_per_hour=20)
    with PipelineStateManager(setup.config_path) as manager:
        run_pipeline(manager, limit=24 * 24)
        state = manager.store.tables.state
        first = setup.first_day
        tz = manager.config.pipeline.tz

        def window_on(day_offset: int, hour: int) -> str:
            start = day_bounds(first + timedelta(days=day_offset), tz)[0] + timedelta(hours=hour)
            with manager.store.transaction(write=False) as conn:
                return conn.execute(
                    state.select()
                    .with_only_columns(state.c.batch_id)
                    .where(state.c.source_query_window_start_time == start)
                ).scalar_one()

        # day 9: a window that fails for good (requeued, then failed twice: max_retries 2)
        broken = window_on(9, 14)
        manager.requeue([broken], statuses=("COMPLETED",))
        for _ in range(2):
            batch = manager.claim("worker-7")
            assert batch is not None and batch.batch_id == broken, batch
            manager.fail(broken, "worker-7", "source: search returned HTTP 503 (cluster red)", step="source")
        # the next window in line is in flight
        manager.claim("worker-3")
        # day 29: a window deleted by hand (a gap); day 31: a row another tool wrote (an overlap)
        with manager.store.engine.begin() as conn:
            conn.execute(state.delete().where(state.c.batch_id == window_on(29, 9)))
            start = day_bounds(first + timedelta(days=31), tz)[0] + timedelta(hours=6, minutes=30)
            conn.execute(
                insert(state).values(
                    batch_id="backfill-tool-0001",
                    pipeline_name=manager.pipeline,
                    source_query_window_start_time=start,
                    source_query_window_end_time=start + timedelta(hours=1),
                    source_query_window_duration_minutes=60,
                    pipeline_status="PENDING",
                    created_at=start + timedelta(days=1),
                    updated_at=start + timedelta(days=1),
                )
            )
    return setup.config_path


if __name__ == "__main__":
    main()
