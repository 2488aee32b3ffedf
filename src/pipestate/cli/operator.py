"""What an operator does to batches: `requeue` and `quarantine`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..statuses import REQUEUABLE, Status, Step
from .app import cli, config_option, json_option, load_manager, print_json, utc_instant

if TYPE_CHECKING:  # imported when a command runs, so that `pipestate --help` stays fast
    pass


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
    done = load_manager().requeue(
        list(batch_ids) or None,
        start=utc_instant(start, "--start"),
        end=utc_instant(end, "--end"),
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
    done = load_manager().quarantine(list(batch_ids), reason, force=force)
    if as_json:
        print_json({"quarantined": done, "reason": reason})
        return
    click.echo(f"quarantined {len(done)} batch(es); run pipestate populate to cover their time")
    for entry in done:
        click.echo(f"  {entry['batch_id']} (was {entry['previous_status']})")
