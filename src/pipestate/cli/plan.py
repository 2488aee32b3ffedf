"""`pipestate populate`, `validate` and `regrid`: the plan over the state table, applied or checked."""

from __future__ import annotations

import io
import json
import sys
from typing import TYPE_CHECKING

import click

from ..show.text import populate_text
from ..windows import WHEN_HELP, local_when
from .app import SETTINGS, cli, config_option, json_option, load_manager, print_json
from .output import say_error

if TYPE_CHECKING:  # imported when a command runs, so that `pipestate --help` stays fast
    pass


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
    report = load_manager().populate_pipeline_batches(dry_run=dry_run)
    if as_json and SETTINGS.get("pretty"):
        written = io.StringIO()
        report.write_json(written)
        print_json(json.loads(written.getvalue()))
    elif as_json:
        report.write_json(sys.stdout)  # one line, `created` streamed
    else:
        click.echo(populate_text(report, "populate"))


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
    report = load_manager().validate()
    problems = report.problems(require_coverage)
    if as_json:
        print_json(report.validate_dict(require_coverage))
    else:
        click.echo(populate_text(report, "validate"))
    if problems:
        say_error(SETTINGS, f"validate: {'; '.join(problems)}")
        sys.exit(1)


@cli.command()
@config_option
@click.option(
    "--granularity",
    required=True,
    metavar="G",
    help="The new grid: '<N>m', '<N>h' (1 minute to 24 hours) or '1d', on each local day.",
)
@click.option(
    "--start", metavar="WHEN", default=None, help=f"From WHEN (default: the range's start): {WHEN_HELP}."
)
@click.option(
    "--end", metavar="WHEN", default=None, help="Up to WHEN, exclusive (default: the last window's end)."
)
@click.option(
    "--dry-run", is_flag=True, help="Show the windows before and after per local day; write nothing."
)
@json_option
def regrid(granularity: str, start: str | None, end: str | None, dry_run: bool, as_json: bool) -> None:
    """Put the PENDING and FAILED windows of a range on a new grid.

    COMPLETED and IN_PROGRESS windows stay (and so does a window whose data
    reached the target once); the new windows are cut at their edges, never
    cross a local midnight, and carry record_origin REGRID; the windows they
    replace become SUPERSEDED with the reason, one audit event each. Under
    populate's lock: a window a worker claims meanwhile is never superseded.
    Change [pipeline] granularity too if new windows should use the new grid.
    """
    from ..show.text import regrid_text

    manager = load_manager()
    tz = manager.config.pipeline.tz
    low = None if start is None else local_when(start, tz, "--start")
    high = None if end is None else local_when(end, tz, "--end")
    report = manager.regrid(granularity, start=low, end=high, dry_run=dry_run)
    if as_json:
        print_json(report.to_dict())
    else:
        click.echo(regrid_text(report, tz))
