"""The `pipestate` command's root: the click group, the options every command shares, and the
entry point that turns errors into the contract's exit codes (one line per user error)."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import PipestateError, UsageError
from ..windows import WHEN_HELP, local_when
from .output import LEVELS, Settings, configure, dump_json, say_error

if TYPE_CHECKING:  # imported when a command runs, so that `pipestate --help` stays fast
    from ..manager import PipelineStateManager


_CONFIG_HELP = "Config file (default: $PIPESTATE_CONFIG, else ./pipestate.toml)."
NOW_HELP = (
    "Plan and report as of this instant, not now (a replay; also env PIPESTATE_NOW): "
    f"{WHEN_HELP}. Commands that hold leases refuse it."
)

# The shared options of this invocation (see output.Settings); main() starts each run afresh.
SETTINGS = Settings()


def _remember_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    # --config may come before or after the subcommand: keep whichever was given.
    if value is not None:
        ctx.ensure_object(dict)["config"] = value
        root = ctx.find_root()
        root.ensure_object(dict)["config"] = value
    return value


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    # Like --config: accepted before or after the subcommand; a default never undoes a value given.
    # (A flag's False is "not given", except --no-progress, which says no.)
    if param.name and value is not None and (value is not False or param.name == "progress"):
        SETTINGS[param.name] = value
        configure(SETTINGS.level, SETTINGS.json_logs)
    return value


def shared_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The output and clock options every command takes, before or after its name."""
    options = [
        click.option(
            "--quiet",
            "-q",
            is_flag=True,
            default=None,
            callback=_remember,
            expose_value=False,
            is_eager=True,
            help="Only errors on stderr: no progress, no warnings (for cron).",
        ),
        click.option(
            "--log-level",
            type=click.Choice(LEVELS),
            default=None,
            callback=_remember,
            expose_value=False,
            is_eager=True,
            help="Log lines on stderr from this level up (default: warning; error with --quiet).",
        ),
        click.option(
            "--log-format",
            type=click.Choice(["text", "json"]),
            default=None,
            callback=_remember,
            expose_value=False,
            is_eager=True,
            help="json: one JSON object per log line (ts, level, message, pipeline, batch_id, worker, step).",
        ),
        click.option(
            "--pretty",
            is_flag=True,
            default=None,
            callback=_remember,
            expose_value=False,
            is_eager=True,
            help="With --json: indented for people (default: one line, for logs and pipes).",
        ),
        click.option(
            "--progress/--no-progress",
            default=None,
            callback=_remember,
            expose_value=False,
            is_eager=True,
            help="Show progress on stderr (default: only when stderr is a terminal).",
        ),
        click.option(
            "--now",
            metavar="INSTANT",
            default=None,
            callback=_remember,
            expose_value=False,
            is_eager=True,
            help=NOW_HELP,
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def config_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """--config, and the shared options (output and clock) every command takes."""
    return shared_options(
        click.option(
            "--config",
            "config_path",
            metavar="PATH",
            callback=_remember_config,
            expose_value=False,
            is_eager=True,
            help=_CONFIG_HELP,
        )(function)
    )


def json_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON object on stdout, on one line (see --pretty)."
    )(function)


def config_path() -> str | None:
    ctx = click.get_current_context()
    return ctx.find_root().ensure_object(dict).get("config")


def replay_now() -> str | None:
    """--now, else $PIPESTATE_NOW, else None (the database's clock)."""
    return SETTINGS.get("now") or os.environ.get("PIPESTATE_NOW") or None


def load_manager(live: bool = False) -> PipelineStateManager:
    """The manager of the configured pipeline; on the replay clock when --now (or
    PIPESTATE_NOW) is given, which a `live` command (one that holds leases) refuses."""
    from ..config import load_config

    when = replay_now()
    if when is not None and live:
        name = click.get_current_context().info_name
        option = "--now" if SETTINGS.get("now") else "PIPESTATE_NOW"
        raise UsageError(
            f"{option}: {name} works on the database's clock, by which leases are judged; "
            "a replay clock is for populate, validate, status, windows, report, metrics and regrid"
        )
    # The config first: a mistake in it costs no import of the database layer.
    path = config_path()
    config = load_config(Path(path) if path is not None else None)
    clock = None
    if when is not None:
        instant = local_when(when, config.pipeline.tz, "--now" if SETTINGS.get("now") else "PIPESTATE_NOW")
        clock = lambda: instant  # noqa: E731 - the replay clock: always this instant
    from ..manager import PipelineStateManager

    manager = PipelineStateManager(config, clock=clock)
    configure(SETTINGS.level, SETTINGS.json_logs, manager.pipeline)
    return manager


def print_json(data: Any) -> None:
    click.echo(dump_json(data, bool(SETTINGS.get("pretty"))))


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
    configure(SETTINGS.level, SETTINGS.json_logs)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())  # plain `pipestate`: the help, exit 0


def worker_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--worker", required=True, metavar="ID", help="Id of the calling worker (host:pid is a good choice)."
    )(function)


def token_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--token", default=None, metavar="TOKEN", help="The claim_token claim printed (stricter fencing)."
    )(function)


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
    "granularity": "--granularity",
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
    SETTINGS.clear()
    debug = "--debug" in args
    if debug:  # accepted before or after the subcommand, like --config
        args = ["--debug", *(arg for arg in args if arg != "--debug")]
    try:
        cli.main(args=args, prog_name="pipestate", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code or 0)
    except click.exceptions.Abort:
        say_error(SETTINGS, "aborted")
        return 130
    except click.UsageError as err:
        say_error(SETTINGS, f"error: {err.format_message()}")
        return 2
    except PipestateError as err:
        if debug:
            traceback.print_exc()  # --debug adds the traceback; the exit code stays the contract's
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        notes = [note for note in getattr(err, "__notes__", ()) if note]  # e.g. what was written before
        if notes:
            message += f" ({'; '.join(notes)})"
        say_error(SETTINGS, f"error: {_in_cli_words(message)}")
        return err.exit_code
    except SystemExit as done:
        return int(done.code or 0) if not isinstance(done.code, str) else 1
    except Exception as err:  # noqa: BLE001 - a bug: say so in one line unless --debug
        if debug:
            traceback.print_exc()
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        hint = "" if debug else " (rerun with --debug)"
        say_error(SETTINGS, f"internal error: {type(err).__name__}: {first}{hint}")
        return 3
    return 0


def entry() -> None:
    sys.exit(main())
