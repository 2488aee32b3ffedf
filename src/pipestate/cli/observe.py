"""The observing commands: `status`, `history`, `windows`, `report` and `metrics`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..statuses import STATUS_ORDER
from ..windows import WHEN_HELP
from .app import SETTINGS, cli, config_option, json_option, load_manager, print_json
from .output import dump_json

if TYPE_CHECKING:  # imported when a command runs, so that `pipestate --help` stays fast
    pass


@cli.command()
@config_option
@click.option("--no-calendar", is_flag=True, help="Leave out the per-day calendar (and its query).")
@json_option
def status(no_calendar: bool, as_json: bool) -> None:
    """Counts by status, coverage of the range, oldest pending, failures, and a
    calendar of the local days coloured by state (plain symbols when stdout is
    not a terminal or NO_COLOR is set; under "calendar" with --json)."""
    from ..show.text import status_text

    manager = load_manager()
    if no_calendar:
        data, days = manager.status(), None
    else:
        data, days = manager.status_and_calendar()
    if as_json:
        if days is not None:
            data["calendar"] = days.to_dict()
        print_json(data)
        return
    click.echo(status_text(data, manager.config.pipeline.tz))
    if days is not None:
        from ..show.terminal import render_calendar

        render_calendar(days)


@cli.command()
@config_option
@click.argument("batch_id")
@json_option
def history(batch_id: str, as_json: bool) -> None:
    """Print a batch's story from the audit trail."""
    from ..show.text import history_text

    manager = load_manager()
    events = manager.history(batch_id)
    if as_json:
        print_json({"batch_id": batch_id, "events": events})
    else:
        click.echo(history_text(batch_id, events, manager.config.pipeline.tz))


@cli.command()
@config_option
@click.option(
    "--date",
    "day",
    metavar="DATE",
    help="One local day YYYY-MM-DD of the pipeline's zone (default: the range's last).",
)
@click.option("--start", metavar="WHEN", help=f"From WHEN: {WHEN_HELP}.")
@click.option("--end", metavar="WHEN", help="Up to WHEN, exclusive (default: a day after --start).")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(list(STATUS_ORDER)),
    help="Only windows in this status (repeatable).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=1_000_000),
    default=500,
    show_default=True,
    help="At most this many.",
)
@json_option
def windows(
    day: str | None, start: str | None, end: str | None, statuses: tuple[str, ...], limit: int, as_json: bool
) -> None:
    """The windows of a local day or range: local and UTC times, status, step,
    retries, worker and last error (windows count by where they start)."""

    manager = load_manager()
    low, high = manager.window_range(day, start, end)
    data = manager.list_windows(low, high, statuses, limit)
    if as_json:
        print_json(data)
        return
    from ..show.terminal import render_windows

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
    from ..show.html import write_report

    path = Path(html_path)
    if not path.parent.is_dir():
        raise click.BadParameter(f"no such folder: {path.parent}", param_hint="--html")
    written = write_report(load_manager(), path)
    if as_json:
        print_json(written)
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
    from ..show.metrics import metrics_json, metrics_text

    manager = load_manager()
    figures = manager.alert_data()
    if as_json:
        text = dump_json(metrics_json(manager.pipeline, figures), bool(SETTINGS.get("pretty"))) + "\n"
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
