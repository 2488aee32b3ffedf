"""`pipestate run` and `pipestate demo`: move the due windows source -> stage -> target."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..statuses import Status
from .app import (
    SETTINGS,
    cli,
    config_option,
    json_option,
    load_manager,
    print_json,
    replay_now,
    shared_options,
)
from .output import configure, progress_wanted, say_error

if TYPE_CHECKING:  # imported when a command runs, so that `pipestate --help` stays fast
    from ..manager import PipelineStateManager
    from ..run.runner import RunResult


# -- running the pipeline ----------------------------------------------------------


class _Progress:
    """Progress on stderr, so that stdout stays for the result: a bar on a terminal; where
    `--progress` asks for it off a terminal, a plain line every few seconds; else nothing
    (a cron job mails whatever reaches stderr)."""

    def __init__(self) -> None:
        self.wanted = progress_wanted(SETTINGS)
        self.tty = sys.stderr.isatty()
        self.last_line = 0.0
        self.bar: Any = None

    def __call__(self, counts: dict[str, int]) -> None:
        import time

        if not self.wanted:
            return
        done = counts.get(Status.COMPLETED, 0)
        total = sum(v for k, v in counts.items() if k != Status.SUPERSEDED)
        failed = counts.get(Status.FAILED, 0)
        if self.tty:
            if self.bar is None:
                self.bar = click.progressbar(
                    length=max(total, 1), label="batches", show_pos=True, file=sys.stderr
                )
                self.bar.__enter__()
            self.bar.length = max(total, 1)
            self.bar.update(done - self.bar.pos)
            self.bar.label = f"batches (failed {failed})" if failed else "batches"
        elif time.monotonic() - self.last_line >= 5:
            self.last_line = time.monotonic()
            pending = counts.get(Status.PENDING, 0)
            click.echo(f"progress: {done}/{total} completed, {failed} failed, {pending} pending", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.render_finish()
            self.bar = None


def _log_setup(pipeline: str) -> Callable[[], None]:
    """What each worker process runs first: the parent's logging (picklable, for spawn)."""
    return partial(configure, SETTINGS.level, SETTINGS.json_logs, pipeline)


def _run(
    manager: PipelineStateManager,
    workers: int,
    once: bool,
    limit: int | None,
    inject: float,
    seed: int | None,
) -> RunResult:
    from ..run.runner import run_pipeline

    progress = _Progress()
    try:
        return run_pipeline(
            manager,
            workers=workers,
            once=once,
            limit=limit,
            inject_failures=inject,
            seed=seed,
            progress=progress if progress.wanted else None,  # no counting nobody reads
            log_setup=_log_setup(manager.pipeline),
        )
    finally:
        progress.close()


inject_option = click.option(
    "--inject-failures",
    "inject",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.0,
    metavar="FRACTION",
    help="Fail this fraction of steps on purpose, to watch retries work (demos and tests).",
)


@cli.command()
@config_option
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Worker processes.")
@click.option("--once", is_flag=True, help="Each worker processes at most one batch.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many batches in all.")
@inject_option
@click.option("--seed", type=int, default=None, hidden=True)
@click.option(
    "--mirror", "then_mirror", is_flag=True, help="Then mirror the state table into Snowflake ([mirror])."
)
@json_option
def run(
    workers: int,
    once: bool,
    limit: int | None,
    inject: float,
    seed: int | None,
    then_mirror: bool,
    as_json: bool,
) -> None:
    """Populate, then move each claimable batch source -> stage -> target.

    Each batch is extracted into one staged file and loaded so that a retry
    replaces its rows in the target instead of duplicating them. A retried
    batch resumes at its first unfinished step. SIGTERM stops cleanly.
    With --mirror, the state table is then mirrored (see `pipestate mirror`).
    """
    from ..show.text import mirror_text, run_json, run_problems, run_text

    manager = load_manager(live=True)
    if then_mirror:
        from ..ops.mirror import mirror_target

        mirror_target(manager.context)  # [mirror] is checked before anything runs (exit 2)
    result = _run(manager, workers, once, limit, inject, seed)
    summary = result.summary
    mirrored = None
    if then_mirror:
        from ..ops.mirror import mirror

        mirrored = mirror(manager.context)
    if as_json:
        data = run_json(result, manager.counts())
        if mirrored is not None:
            data["mirror"] = mirrored.as_json()
        print_json(data)
    else:
        click.echo(run_text(result))
        if mirrored is not None:
            click.echo(mirror_text(mirrored))
    if not summary.ok:
        say_error(SETTINGS, run_problems(summary))
        sys.exit(RUN_HAD_FAILURES)


RUN_HAD_FAILURES = 5  # the contract's exit code: the run ended but a batch failed or lost its lease


@cli.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default="pipestate-demo",
    show_default=True,
    help="Where the demo writes its events, stage, target and state.",
)
@click.option("--days", type=click.IntRange(1, 60), default=3, show_default=True, help="Days of events.")
@click.option("--events-per-hour", type=click.IntRange(1, 100_000), default=120, show_default=True)
@click.option("--workers", type=click.IntRange(1, 16), default=1, show_default=True)
@inject_option
@shared_options
@json_option
def demo(directory: str, days: int, events_per_hour: int, workers: int, inject: float, as_json: bool) -> None:
    """Run the whole pipeline locally on synthetic events (files -> local stage -> DuckDB).

    Writes everything under --dir (recreated each time): NDJSON events, a
    config, the SQLite state table, the staged files and a DuckDB target.
    """
    from ..run.demo import run_demo, write_demo
    from ..show.text import demo_text, run_json

    if replay_now() is not None:
        raise click.UsageError("--now: the demo runs on the real clock (its windows end now)")
    setup = write_demo(Path(directory), days=days, events_per_hour=events_per_hour)
    generated = (
        f"generated {setup.events} events for {setup.first_day} .. {setup.last_day} "
        f"({days} local days, America/New_York) in {setup.directory / 'source'}"
    )
    if not (as_json and SETTINGS.get("quiet")):
        click.echo(generated, err=as_json)
    progress = _Progress()
    try:
        result = run_demo(
            setup, workers=workers, inject_failures=inject, progress=progress if progress.wanted else None
        )
    finally:
        progress.close()
    if as_json:
        print_json(
            {
                "directory": str(setup.directory.absolute()),
                "config": str(setup.config_path.absolute()),
                "events": setup.events,
                "target_rows": result.rows,
                "distinct_events": result.distinct,
                "verdict": result.verdict,
                "run": run_json(result.run, result.counts),
            }
        )
    else:
        click.echo(demo_text(result))
    if result.verdict != "exactly once":
        raise SystemExit(1)


# The library names its arguments; the command line names its options.
