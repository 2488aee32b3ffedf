"""What an operator does to batches: `requeue` and `quarantine`."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import click

from ..statuses import REQUEUABLE, Status, Step
from ..windows import WHEN_HELP, day_bounds, local_when, read_day
from .app import cli, config_option, json_option, load_manager, print_json

if TYPE_CHECKING:  # imported when a command runs, so that `pipestate --help` stays fast
    pass


@cli.command()
@config_option
@click.argument("batch_ids", nargs=-1)
@click.option("--failed", "all_failed", is_flag=True, help="Every FAILED batch of the pipeline.")
@click.option(
    "--date",
    "day",
    metavar="DATE",
    default=None,
    help="The windows of this local day YYYY-MM-DD (as `windows --date`).",
)
@click.option(
    "--start", metavar="WHEN", default=None, help=f"Windows starting at or after WHEN: {WHEN_HELP}."
)
@click.option(
    "--end",
    metavar="WHEN",
    default=None,
    help="Windows ending at or before WHEN (a bare date: that day's start).",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(list(REQUEUABLE)),
    help="Which statuses to requeue in the range (repeatable; default FAILED).",
)
@click.option("--force", is_flag=True, help="Also requeue batches under a live lease.")
@click.option(
    "--from-step",
    type=click.Choice([Step.SOURCE, Step.TARGET]),
    default=Step.SOURCE,
    show_default=True,
    help="source: the next run reads the source again (late data arrives); "
    "target: it reloads the staged files as they are.",
)
@json_option
def requeue(
    batch_ids: tuple[str, ...],
    all_failed: bool,
    day: str | None,
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
    pipestate requeue --date D [--status COMPLETED]   the windows of local day D
    pipestate requeue --start T --end T [--status COMPLETED]   a range
    pipestate requeue ... --from-step target     reload the staged files, do not re-extract
    """
    if not batch_ids and not all_failed and start is None and end is None and day is None:
        raise click.UsageError("name batch ids, or --failed, or --date, or a --start/--end range")
    manager = load_manager(live=True)
    # One meaning of a date in every command: a bare date is the pipeline's local day.
    tz = manager.config.pipeline.tz
    low: datetime | None
    high: datetime | None
    if day is not None:
        if start is not None or end is not None:
            raise click.UsageError("--date: give --date, or --start/--end, not both")
        low, high = day_bounds(read_day(day, "--date"), tz)
    else:
        low = None if start is None else local_when(start, tz, "--start")
        high = None if end is None else local_when(end, tz, "--end")
    done = manager.requeue(
        list(batch_ids) or None,
        start=low,
        end=high,
        statuses=statuses or (Status.FAILED,),
        force=force,
        from_step=from_step,
    )
    if as_json:
        print_json({"requeued": done})
    else:
        from ..show.text import requeue_text

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
    done = load_manager(live=True).quarantine(list(batch_ids), reason, force=force)
    if as_json:
        print_json({"quarantined": done, "reason": reason})
        return
    click.echo(f"quarantined {len(done)} batch(es); run pipestate populate to cover their time")
    for entry in done:
        click.echo(f"  {entry['batch_id']} (was {entry['previous_status']})")
