"""The `pipestate` command's root: the click group, the options every command shares, and the
entry point that turns errors into the contract's exit codes (one line per user error)."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from ..errors import PipestateError

if TYPE_CHECKING:  # imported when a command runs, so that `pipestate --help` stays fast
    from ..manager import PipelineStateManager


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


def config_path() -> str | None:
    ctx = click.get_current_context()
    return ctx.find_root().ensure_object(dict).get("config")


def load_manager() -> PipelineStateManager:
    from ..manager import PipelineStateManager

    return PipelineStateManager(config_path())


def print_json(data: Any) -> None:
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


def worker_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--worker", required=True, metavar="ID", help="Id of the calling worker (host:pid is a good choice)."
    )(function)


def token_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--token", default=None, metavar="TOKEN", help="The claim_token claim printed (stricter fencing)."
    )(function)


def utc_instant(value: str | None, name: str) -> datetime | None:
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
