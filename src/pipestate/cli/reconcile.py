"""`pipestate reconcile`: recount what the target (and the source) hold against the state table."""

from __future__ import annotations

import sys

import click

from .app import cli, config_option, json_option, load_manager, print_json


@cli.command()
@config_option
@click.option("--start", metavar="WHEN", help="Windows starting at or after this local date or datetime.")
@click.option(
    "--end", metavar="WHEN", help="Windows starting before this local date or datetime (exclusive)."
)
@click.option("--source", "with_source", is_flag=True, help="Also recount the source per window (late data).")
@json_option
def reconcile(start: str | None, end: str | None, with_source: bool, as_json: bool) -> None:
    """Recount each COMPLETED window's rows in the target by pipestate_batch_id (one grouped
    query) against the state table; with --source, the source's records too. Exit 1 on any
    missing, duplicated, stray, out-of-window or re-tagged row, or late data. Writes nothing.

    \b
    pipestate reconcile                               every window
    pipestate reconcile --start 2026-03-01 --end 2026-03-08 --source
    pipestate reconcile --json | jq -r '.batch_ids[]' | xargs pipestate requeue
    """
    manager = load_manager()
    low = manager.window_range(None, start, None)[0] if start else None
    high = manager.window_range(None, None, end)[1] if end else None
    if low is not None and high is not None and high <= low:
        raise click.BadParameter(f"must be after --start ({end!r} is not)", param_hint="--end")
    report = manager.reconcile(low, high, with_source)
    if as_json:
        print_json(report.to_dict())
    else:
        from ..show.text import reconcile_text

        click.echo(reconcile_text(report))
    if not report.ok:
        sys.exit(1)
