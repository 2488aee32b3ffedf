"""`pipestate mirror`: the state table and its audit events copied into Snowflake."""

from __future__ import annotations

import sys

import click

from .app import cli, config_option, json_option, load_manager, print_json

VERIFY_FOUND_DIFFERENCES = 1  # mirror --verify: the copy differs from the source


@cli.command()
@config_option
@click.option(
    "--all", "all_pipelines", is_flag=True, help="Every pipeline in the state table, not only this one."
)
@click.option(
    "--verify",
    is_flag=True,
    help="Then compare the copy with the source (one aggregate query per side); exit 1 on a difference.",
)
@json_option
def mirror(all_pipelines: bool, verify: bool, as_json: bool) -> None:
    """Copy the state table's rows and audit events into Snowflake ([mirror] url, schema,
    table): what changed since the last mirror, exactly, in one transaction with its mark.

    The first mirror (and the first after init-db added a column) copies everything. On
    PostgreSQL later ones read only what committed since; elsewhere each copies the whole scope.
    """
    from ..ops.mirror import mirror as mirror_copy
    from ..show.text import mirror_text

    manager = load_manager()
    result = mirror_copy(manager.context, all_pipelines=all_pipelines, verify=verify)
    if as_json:
        print_json(result.as_json())
    else:
        click.echo(mirror_text(result))
    if result.equal is False:
        click.echo(f"pipestate: the copy in {result.tables['state']} differs from the source", err=True)
        sys.exit(VERIFY_FOUND_DIFFERENCES)
