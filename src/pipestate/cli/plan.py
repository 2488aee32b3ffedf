"""`pipestate populate` and `pipestate validate`: the plan over the state table, applied or checked."""

from __future__ import annotations

import io
import json
import sys
from typing import TYPE_CHECKING

import click

from ..show.text import populate_text
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
