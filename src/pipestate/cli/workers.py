"""The worker commands: `claim`, `heartbeat`, `complete`, `fail` and `release`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ..statuses import Status
from .app import cli, config_option, json_option, load_manager, print_json, token_option, worker_option

if TYPE_CHECKING:  # imported when a command runs, so that `pipestate --help` stays fast
    pass


@cli.command()
@config_option
@worker_option
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Take up to N batches in one claim, each with its own lease and token; "
    'the JSON then adds "batches" (the first is also "batch").',
)
@json_option
def claim(worker: str, count: int | None, as_json: bool) -> None:
    """Atomically take the next claimable batch (oldest window first by default).

    Prints {"batch": {...}} or {"batch": null} when nothing is claimable or
    max_in_flight is reached. Claimable: PENDING; FAILED with retries left and
    its backoff elapsed; IN_PROGRESS whose lease expired (a failed attempt).
    With --count N, up to N batches, each counted by max_in_flight.
    """
    from ..show.text import claim_text

    batches = load_manager(live=True).claim_batches(worker, count or 1)
    first = batches[0] if batches else None
    if as_json:
        shown: dict[str, Any] = {"batch": first.to_dict() if first else None}
        if count is not None:
            shown["batches"] = [batch.to_dict() for batch in batches]
        print_json(shown)
    elif count is None or not batches:
        click.echo(claim_text(first))
    else:
        click.echo("\n".join(claim_text(batch) for batch in batches))


@cli.command()
@config_option
@click.argument("batch_id")
@worker_option
@token_option
@json_option
def heartbeat(batch_id: str, worker: str, token: str | None, as_json: bool) -> None:
    """Extend the lease of a batch the worker holds (exit 4 if it does not)."""
    from ..windows import iso

    expires = load_manager(live=True).heartbeat(batch_id, worker, token)
    if as_json:
        print_json({"batch_id": batch_id, "lease_expires_at": iso(expires)})
    else:
        click.echo(f"{batch_id}: lease extended to {expires.isoformat()}")


@cli.command()
@config_option
@click.argument("batch_id")
@worker_option
@token_option
@json_option
def complete(batch_id: str, worker: str, token: str | None, as_json: bool) -> None:
    """Mark a batch the worker holds COMPLETED (exit 4 if it does not)."""
    load_manager(live=True).complete(batch_id, worker, token)
    if as_json:
        print_json({"batch_id": batch_id, "status": Status.COMPLETED})
    else:
        click.echo(f"{batch_id}: COMPLETED")


@cli.command()
@config_option
@click.argument("batch_id")
@worker_option
@token_option
@click.option("--error", required=True, metavar="TEXT", help="What went wrong (stored in last_error).")
@click.option("--step", default=None, metavar="STEP", help="Step that failed: source, stage or target.")
@json_option
def fail(batch_id: str, worker: str, token: str | None, error: str, step: str | None, as_json: bool) -> None:
    """Record a failed attempt: retry_count + 1, FAILED, retry after the backoff."""
    from ..show.text import fail_text

    outcome = load_manager(live=True).fail(batch_id, worker, error, token, step)
    if as_json:
        print_json({"batch_id": batch_id, "status": Status.FAILED, **outcome})
    else:
        click.echo(fail_text(batch_id, outcome))


@cli.command()
@config_option
@click.argument("batch_id")
@worker_option
@token_option
@json_option
def release(batch_id: str, worker: str, token: str | None, as_json: bool) -> None:
    """Give a held batch back unfinished (PENDING again, no retry counted)."""
    load_manager(live=True).release(batch_id, worker, token)
    if as_json:
        print_json({"batch_id": batch_id, "status": Status.PENDING})
    else:
        click.echo(f"{batch_id}: released")
