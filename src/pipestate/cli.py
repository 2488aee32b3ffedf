"""The `pipestate` command: parse, call the library, print. One line per user error."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .errors import ConfigError, PipestateError
from .examples import EXAMPLE_CONFIG

if TYPE_CHECKING:  # imported when a command runs, so that `pipestate --help` stays fast
    from .manager import PipelineStateManager
    from .runner import RunResult

_CONFIG_HELP = "Config file (default: $PIPESTATE_CONFIG, else ./pipestate.toml)."


def _remember_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    # --config may come before or after the subcommand: keep whichever was given.
    if value is not None:
        ctx.ensure_object(dict)["config"] = value
        root = ctx.find_root()
        root.ensure_object(dict)["config"] = value
    return value


def config_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config",
        "config_path",
        metavar="PATH",
        callback=_remember_config,
        expose_value=False,
        is_eager=True,
        help=_CONFIG_HELP,
    )(function)


def json_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")(function)


def _config_path() -> str | None:
    ctx = click.get_current_context()
    return ctx.find_root().ensure_object(dict).get("config")


def _manager() -> PipelineStateManager:
    from .manager import PipelineStateManager

    return PipelineStateManager(_config_path())


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    invoke_without_command=True,
)
@config_option
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="pipestate")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """pipestate keeps the state table of a time-windowed batch pipeline.

    Run `pipestate populate` first in every run: it repairs the table (overlaps
    superseded, gaps filled) and adds the windows that are now due. Then
    workers claim windows, and heartbeat, complete or fail them.

    Exit codes: 0 ok, 1 validate found problems, 2 bad configuration or usage,
    3 database or internal error, 4 the caller does not hold the batch's lease,
    5 run finished but a batch of it ended FAILED or lost its lease.
    """
    ctx.ensure_object(dict)["debug"] = debug
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())  # plain `pipestate`: the help, exit 0


@cli.command()
@config_option
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@json_option
def init(force: bool, as_json: bool) -> None:
    """Write a commented example config (works as is, on SQLite, from any folder)."""
    from .config import DEFAULT_CONFIG_PATH

    path = Path(_config_path() or DEFAULT_CONFIG_PATH)
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists (use --force to overwrite)")
    try:
        path.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"--config: cannot write {path}: {err.strerror}") from err
    if as_json:
        _print_json({"written": str(path.absolute())})
    else:
        click.echo(f"wrote {path}; next: pipestate populate --dry-run")


@cli.command("init-db")
@config_option
@click.option(
    "--migrate-timestamps",
    is_flag=True,
    help="On PostgreSQL, convert zone-less timestamp columns another tool made to "
    "timestamptz, reading their values as UTC (refused otherwise).",
)
@json_option
def init_db(migrate_timestamps: bool, as_json: bool) -> None:
    """Create the state table, its _events and _meta tables, and add missing columns (idempotent)."""
    manager = _manager()
    actions = manager.init_db(migrate_timestamps=migrate_timestamps)
    table = manager.config.state.table
    if as_json:
        _print_json({"table": table, "actions": actions})
    else:
        click.echo(f"{table}: " + ("; ".join(actions) if actions else "already up to date"))


@cli.command()
@config_option
@click.option("--dry-run", is_flag=True, help="Compute and report the plan; write nothing.")
@json_option
def populate(dry_run: bool, as_json: bool) -> None:
    """Repair and extend the windows so they tile [start, end) (run this first).

    \b
    1. analyse the active windows (durations overall and per local day)
    2. find gaps (missing_day, start_of_day, end_of_day, between_windows)
    3. resolve overlaps: COMPLETED first, then a live IN_PROGRESS lease, then
       the most recently updated; losers become SUPERSEDED, with the reason
    4. fill every uncovered stretch with PENDING windows on the day's grid
    All in one transaction under a per-pipeline lock; safe to run concurrently.
    """
    report = _manager().populate_pipeline_batches(dry_run=dry_run)
    if as_json:
        report.write_json(sys.stdout)
    else:
        click.echo(report.render("populate"))


@cli.command()
@config_option
@click.option(
    "--require-coverage",
    is_flag=True,
    help="Also exit 1 when part of the range has no window yet (populate has not run since).",
)
@json_option
def validate(require_coverage: bool, as_json: bool) -> None:
    """Report gaps, overlaps and invalid rows; write nothing. Exit 1 if any, or if
    the state table does not exist."""
    report = _manager().validate()
    problems = report.problems(require_coverage)
    if as_json:
        _print_json(report.validate_dict(require_coverage))
    else:
        click.echo(report.render("validate"))
    if problems:
        click.echo(f"pipestate: validate: {'; '.join(problems)}", err=True)
        sys.exit(1)


@cli.command()
@config_option
@click.option("--no-calendar", is_flag=True, help="Leave out the per-day calendar (and its query).")
@json_option
def status(no_calendar: bool, as_json: bool) -> None:
    """Counts by status, coverage of the range, oldest pending, failures, and a
    calendar of the local days coloured by state (plain symbols when stdout is
    not a terminal or NO_COLOR is set; under "calendar" with --json)."""
    from . import observe
    from .report import status_text

    manager = _manager()
    data = manager.status()
    days = None if no_calendar else observe.calendar(manager)
    if as_json:
        if days is not None:
            data["calendar"] = days.to_dict()
        _print_json(data)
        return
    click.echo(status_text(data, manager.config.pipeline.tz))
    if days is not None:
        from .console import render_calendar

        render_calendar(days)


# -- workers ---------------------------------------------------------------------


def worker_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--worker", required=True, metavar="ID", help="Id of the calling worker (host:pid is a good choice)."
    )(function)


def token_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--token", default=None, metavar="TOKEN", help="The claim_token claim printed (stricter fencing)."
    )(function)


@cli.command()
@config_option
@worker_option
@json_option
def claim(worker: str, as_json: bool) -> None:
    """Atomically take the next claimable batch (oldest window first by default).

    Prints {"batch": {...}} or {"batch": null} when nothing is claimable or
    max_in_flight is reached. Claimable: PENDING; FAILED with retries left and
    its backoff elapsed; IN_PROGRESS whose lease expired (a failed attempt).
    """
    from .report import claim_text

    batch = _manager().claim(worker)
    if as_json:
        _print_json({"batch": batch.to_dict() if batch else None})
    else:
        click.echo(claim_text(batch))


@cli.command()
@config_option
@click.argument("batch_id")
@worker_option
@token_option
@json_option
def heartbeat(batch_id: str, worker: str, token: str | None, as_json: bool) -> None:
    """Extend the lease of a batch the worker holds (exit 4 if it does not)."""
    from .report import iso

    expires = _manager().heartbeat(batch_id, worker, token)
    if as_json:
        _print_json({"batch_id": batch_id, "lease_expires_at": iso(expires)})
    else:
        click.echo(f"{batch_id}: lease extended to {expires.isoformat()}")


@cli.command()
@config_option
@click.argument("batch_id")
@worker_option
@token_option
@json_option
def complete(batch_id: str, worker: str, token: str | None, as_json: bool) -> None:
    """Mark a batch the worker holds COMPLETED (exit 4 if it does not)."""
    _manager().complete(batch_id, worker, token)
    if as_json:
        _print_json({"batch_id": batch_id, "status": "COMPLETED"})
    else:
        click.echo(f"{batch_id}: COMPLETED")


@cli.command()
@config_option
@click.argument("batch_id")
@worker_option
@token_option
@click.option("--error", required=True, metavar="TEXT", help="What went wrong (stored in last_error).")
@click.option("--step", default=None, metavar="STEP", help="Step that failed: source, stage or target.")
@json_option
def fail(batch_id: str, worker: str, token: str | None, error: str, step: str | None, as_json: bool) -> None:
    """Record a failed attempt: retry_count + 1, FAILED, retry after the backoff."""
    from .report import fail_text

    outcome = _manager().fail(batch_id, worker, error, token, step)
    if as_json:
        _print_json({"batch_id": batch_id, "status": "FAILED", **outcome})
    else:
        click.echo(fail_text(batch_id, outcome))


@cli.command()
@config_option
@click.argument("batch_id")
@worker_option
@token_option
@json_option
def release(batch_id: str, worker: str, token: str | None, as_json: bool) -> None:
    """Give a held batch back unfinished (PENDING again, no retry counted)."""
    _manager().release(batch_id, worker, token)
    if as_json:
        _print_json({"batch_id": batch_id, "status": "PENDING"})
    else:
        click.echo(f"{batch_id}: released")


def _instant(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    from datetime import UTC

    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as err:
        raise click.BadParameter(f"not an ISO 8601 instant: {value!r}", param_hint=name) from err
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@cli.command()
@config_option
@click.argument("batch_ids", nargs=-1)
@click.option("--failed", "all_failed", is_flag=True, help="Every FAILED batch of the pipeline.")
@click.option("--start", default=None, help="With --status: windows starting at or after (UTC ISO 8601).")
@click.option("--end", default=None, help="With --status: windows ending at or before (UTC ISO 8601).")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["FAILED", "COMPLETED", "IN_PROGRESS", "PENDING"]),
    help="Which statuses to requeue in the range (repeatable; default FAILED).",
)
@click.option("--force", is_flag=True, help="Also requeue batches under a live lease.")
@click.option(
    "--from-step",
    type=click.Choice(["source", "target"]),
    default="source",
    show_default=True,
    help="source: the next run reads the source again (late data arrives); "
    "target: it reloads the staged files as they are.",
)
@json_option
def requeue(
    batch_ids: tuple[str, ...],
    all_failed: bool,
    start: str | None,
    end: str | None,
    statuses: tuple[str, ...],
    force: bool,
    from_step: str,
    as_json: bool,
) -> None:
    """Make batches PENDING again with a fresh retry budget.

    \b
    pipestate requeue BATCH_ID [BATCH_ID ...]     those batches
    pipestate requeue --failed                   every FAILED batch
    pipestate requeue --start T --end T [--status COMPLETED]   a range
    pipestate requeue ... --from-step target     reload the staged files, do not re-extract
    """
    if not batch_ids and not all_failed and start is None and end is None:
        raise click.UsageError("name batch ids, or --failed, or a --start/--end range")
    done = _manager().requeue(
        list(batch_ids) or None,
        start=_instant(start, "--start"),
        end=_instant(end, "--end"),
        statuses=statuses or ("FAILED",),
        force=force,
        from_step=from_step,
    )
    if as_json:
        _print_json({"requeued": done})
    else:
        from .report import requeue_text

        click.echo(requeue_text(done))


@cli.command()
@config_option
@click.argument("batch_ids", nargs=-1, required=True, metavar="BATCH_ID...")
@click.option("--reason", required=True, metavar="TEXT", help="Why (kept in supersede_reason and the event).")
@click.option("--force", is_flag=True, help="Also quarantine a batch under a live lease.")
@json_option
def quarantine(batch_ids: tuple[str, ...], reason: str, force: bool, as_json: bool) -> None:
    """Take rows out of the active set: SUPERSEDED with the reason, and an audit event.

    For a row validate reports as invalid (no times, end before start, unknown
    status) or one that must not be processed. The row stays in the table;
    populate then fills its time with new windows. See docs/adopting.md.
    """
    done = _manager().quarantine(list(batch_ids), reason, force=force)
    if as_json:
        _print_json({"quarantined": done, "reason": reason})
        return
    click.echo(f"quarantined {len(done)} batch(es); run pipestate populate to cover their time")
    for entry in done:
        click.echo(f"  {entry['batch_id']} (was {entry['previous_status']})")


@cli.command()
@config_option
@click.argument("batch_id")
@json_option
def history(batch_id: str, as_json: bool) -> None:
    """Print a batch's story from the audit trail."""
    from .report import history_text

    manager = _manager()
    events = manager.history(batch_id)
    if as_json:
        _print_json({"batch_id": batch_id, "events": events})
    else:
        click.echo(history_text(batch_id, events, manager.config.pipeline.tz))


# -- observing ---------------------------------------------------------------------


@cli.command()
@config_option
@click.option(
    "--date", "day", metavar="DATE", help="One local day, YYYY-MM-DD (default: the range's last day)."
)
@click.option(
    "--start", metavar="WHEN", help="From this local date, or datetime (local unless it has an offset)."
)
@click.option("--end", metavar="WHEN", help="Up to (exclusive) this local date or datetime.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["PENDING", "IN_PROGRESS", "COMPLETED", "FAILED", "SUPERSEDED"]),
    help="Only windows in this status (repeatable).",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=500, show_default=True, help="At most this many."
)
@json_option
def windows(
    day: str | None, start: str | None, end: str | None, statuses: tuple[str, ...], limit: int, as_json: bool
) -> None:
    """The windows of a local day or range: local and UTC times, status, step,
    retries, worker and last error (windows count by where they start)."""
    from . import observe

    manager = _manager()
    low, high = observe.window_range(manager, day, start, end)
    data = observe.list_windows(manager, low, high, statuses, limit)
    if as_json:
        _print_json(data)
        return
    from .console import render_windows

    click.echo(render_windows(data, manager.config.pipeline.tz))


@cli.command()
@config_option
@click.option(
    "--html",
    "html_path",
    required=True,
    metavar="FILE",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the report to this self-contained HTML file.",
)
@json_option
def report(html_path: str, as_json: bool) -> None:
    """Write one self-contained HTML page about the pipeline: a calendar and a
    days x hours heatmap of window states, status counts, gaps, overlaps and
    invalid rows, the latest populate's decisions, failures, step durations and
    records/s over time, and the lease view. Nothing is loaded from the network."""
    from .html_report import write_report

    path = Path(html_path)
    if not path.parent.is_dir():
        raise click.BadParameter(f"no such folder: {path.parent}", param_hint="--html")
    written = write_report(_manager(), path)
    if as_json:
        _print_json(written)
    else:
        click.echo(f"wrote {written['html']} ({written['bytes']:,} bytes)")


@cli.command()
@config_option
@click.option("--openmetrics", is_flag=True, help="OpenMetrics text instead of the Prometheus text format.")
@click.option(
    "--output",
    metavar="FILE",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write to FILE atomically (for the node exporter's textfile collector) instead of stdout.",
)
@json_option
def metrics(openmetrics: bool, output: str | None, as_json: bool) -> None:
    """Print the pipeline's metrics for alerting: windows by status, failed for
    good, oldest pending age, stuck leases, and freshness (now minus the end of
    the last window before which all data is COMPLETED)."""
    from . import observe
    from .metrics import metrics_json, metrics_text

    manager = _manager()
    figures = observe.alert_data(manager)
    if as_json:
        text = json.dumps(metrics_json(manager.pipeline, figures), indent=2) + "\n"
    else:
        text = metrics_text(manager.pipeline, figures, openmetrics=openmetrics)
    if output is None:
        click.echo(text, nl=False)
        return
    path = Path(output)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    except OSError as err:
        raise click.BadParameter(f"cannot write {path}: {err.strerror}", param_hint="--output") from err


# -- running the pipeline ----------------------------------------------------------


class _Progress:
    """A progress bar on a terminal, a plain line every few seconds elsewhere; on stderr,
    so that stdout stays for the result (--json prints exactly one object there)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_line = 0.0
        self.bar: Any = None

    def __call__(self, counts: dict[str, int]) -> None:
        import time

        done = counts.get("COMPLETED", 0)
        total = sum(v for k, v in counts.items() if k != "SUPERSEDED")
        failed = counts.get("FAILED", 0)
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
            pending = counts.get("PENDING", 0)
            click.echo(f"progress: {done}/{total} completed, {failed} failed, {pending} pending", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.render_finish()
            self.bar = None


def _run(
    manager: PipelineStateManager,
    workers: int,
    once: bool,
    limit: int | None,
    inject: float,
    seed: int | None,
) -> RunResult:
    from .runner import run_pipeline

    progress = _Progress()
    try:
        return run_pipeline(
            manager,
            workers=workers,
            once=once,
            limit=limit,
            inject_failures=inject,
            seed=seed,
            progress=progress,
        )
    finally:
        progress.close()


_inject_option = click.option(
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
@_inject_option
@click.option("--seed", type=int, default=None, hidden=True)
@json_option
def run(workers: int, once: bool, limit: int | None, inject: float, seed: int | None, as_json: bool) -> None:
    """Populate, then move each claimable batch source -> stage -> target.

    Each batch is extracted into one staged file and loaded so that a retry
    replaces its rows in the target instead of duplicating them. A retried
    batch resumes at its first unfinished step. SIGTERM stops cleanly.
    """
    from .report import run_json, run_problems, run_text

    manager = _manager()
    result = _run(manager, workers, once, limit, inject, seed)
    summary = result.summary
    if as_json:
        _print_json(run_json(result, manager.counts()))
    else:
        click.echo(run_text(result))
    if not summary.ok:
        click.echo(f"pipestate: {run_problems(summary)}", err=True)
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
@_inject_option
@json_option
def demo(directory: str, days: int, events_per_hour: int, workers: int, inject: float, as_json: bool) -> None:
    """Run the whole pipeline locally on synthetic events (files -> local stage -> DuckDB).

    Writes everything under --dir (recreated each time): NDJSON events, a
    config, the SQLite state table, the staged files and a DuckDB target.
    """
    from .demo import run_demo, write_demo
    from .report import demo_text, run_json

    setup = write_demo(Path(directory), days=days, events_per_hour=events_per_hour)
    generated = (
        f"generated {setup.events} events for {setup.first_day} .. {setup.last_day} "
        f"({days} local days, America/New_York) in {setup.directory / 'source'}"
    )
    click.echo(generated, err=as_json)
    progress = _Progress()
    try:
        result = run_demo(setup, workers=workers, inject_failures=inject, progress=progress)
    finally:
        progress.close()
    if as_json:
        _print_json(
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
_OPTIONS = {
    "worker": "--worker",
    "statuses": "--status",
    "from_step": "--from-step",
    "start": "--start",
    "end": "--end",
    "workers": "--workers",
    "limit": "--limit",
    "inject_failures": "--inject-failures",
    "reason": "--reason",
    "batch_ids": "BATCH_ID",
}


def _in_cli_words(message: str) -> str:
    """A library message that opens with an argument's name, opened with its option instead."""
    argument, colon, rest = message.partition(": ")
    if colon and argument in _OPTIONS:
        return f"{_OPTIONS[argument]}: {rest}"
    return message


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit codes per the contract, one line per user error."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:  # accepted before or after the subcommand, like --config
        args = ["--debug", *(arg for arg in args if arg != "--debug")]
    try:
        cli.main(args=args, prog_name="pipestate", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code or 0)
    except click.exceptions.Abort:
        click.echo("pipestate: aborted", err=True)
        return 130
    except click.UsageError as err:
        click.echo(f"pipestate: error: {err.format_message()}", err=True)
        return 2
    except PipestateError as err:
        if debug:
            traceback.print_exc()  # --debug adds the traceback; the exit code stays the contract's
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        notes = [note for note in getattr(err, "__notes__", ()) if note]  # e.g. what was written before
        if notes:
            message += f" ({'; '.join(notes)})"
        click.echo(f"pipestate: error: {_in_cli_words(message)}", err=True)
        return err.exit_code
    except SystemExit as done:
        return int(done.code or 0) if not isinstance(done.code, str) else 1
    except Exception as err:  # noqa: BLE001 - a bug: say so in one line unless --debug
        if debug:
            traceback.print_exc()
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        hint = "" if debug else " (rerun with --debug)"
        click.echo(f"pipestate: internal error: {type(err).__name__}: {first}{hint}", err=True)
        return 3
    return 0


def entry() -> None:
    sys.exit(main())
