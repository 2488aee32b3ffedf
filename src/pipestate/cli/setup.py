"""`pipestate init` and `pipestate init-db`: a first config file, the state table made or migrated."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import ConfigError
from .app import cli, config_option, config_path, json_option, load_manager, print_json
from .examples import EXAMPLE_CONFIG

if TYPE_CHECKING:  # imported when a command runs, so that `pipestate --help` stays fast
    pass


@cli.command()
@config_option
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@json_option
def init(force: bool, as_json: bool) -> None:
    """Write a commented example config (works as is, on SQLite, from any folder)."""
    from ..config import DEFAULT_CONFIG_PATH

    path = Path(config_path() or DEFAULT_CONFIG_PATH)
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists (use --force to overwrite)")
    try:
        path.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"--config: cannot write {path}: {err.strerror}") from err
    if as_json:
        print_json({"written": str(path.absolute())})
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
    manager = load_manager()
    actions = manager.init_db(migrate_timestamps=migrate_timestamps)
    table = manager.config.state.table
    if as_json:
        print_json({"table": table, "actions": actions})
    else:
        click.echo(f"{table}: " + ("; ".join(actions) if actions else "already up to date"))
