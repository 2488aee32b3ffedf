"""Airflow 3 (Task SDK) tasks for pipestate: populate, run batches, validate, announce a day, mirror.

Each command task runs the real `pipestate` command in a subprocess and fails
exactly when its exit code says so: 1 (validate found problems) and 2 (bad
configuration) fail at once, since a retry cannot help; 3, 4 and 5 (database
error, lease lost, batches failed) fail so that the task's `retries` apply.
The command's JSON is the task's return value (XCom).

    from pipestate.integrations import airflow as pipestate_airflow

    populate = pipestate_airflow.PopulateOperator(task_id="populate", config=CONFIG)
    run = pipestate_airflow.RunBatchesOperator.partial(task_id="run", config=CONFIG, limit=50).expand(
        worker=["a", "b", "c"]
    )

The same work as plain functions, for TaskFlow (`@task def populate(): return
pipestate_airflow.populate(CONFIG)`): `populate`, `run_batches`, `validate`,
`complete_day`, `mirror`. Install with `pip install "pipestate[airflow]"`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any

try:
    from airflow.sdk import Asset, BaseOperator
    from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'pipestate.integrations.airflow needs Airflow 3: pip install "pipestate[airflow]"'
    ) from err

from ..manager import PipelineStateManager
from ..windows import local_date_of

__all__ = [
    "CompleteDayOperator",
    "MirrorOperator",
    "PipestateCommandFailed",
    "PipestateCommandRefused",
    "PipestateOperator",
    "PopulateOperator",
    "RunBatchesOperator",
    "ValidateOperator",
    "complete_day",
    "day_asset",
    "mirror",
    "pipestate_command",
    "populate",
    "run_batches",
    "validate",
]

log = logging.getLogger("pipestate.airflow")

# Exit codes after which trying the same command again cannot succeed.
_FINAL = {1: "validate found problems", 2: "bad configuration or usage"}
_RETRYABLE = {
    3: "database or internal error",
    4: "the batch's lease is held by another worker",
    5: "batches of the run ended FAILED or lost their lease",
}


class PipestateCommandFailed(AirflowException):
    """`pipestate` exited with a code a retry may fix (3, 4, 5); `exit_code` and `output` say how."""

    def __init__(self, message: str, exit_code: int, output: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.exit_code, self.output = exit_code, output


class PipestateCommandRefused(AirflowFailException):
    """`pipestate` exited 1 or 2: the task fails without retrying."""

    def __init__(self, message: str, exit_code: int, output: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.exit_code, self.output = exit_code, output


def pipestate_command(
    arguments: Sequence[str],
    config: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run `pipestate ARGUMENTS --json` with this Python; its JSON on exit 0, else raise.

    The command's stderr (progress, the one-line error) goes to the task log.
    """
    command = [sys.executable, "-m", "pipestate", *arguments, "--json"]
    if config is not None:
        command += ["--config", os.fspath(config)]
    log.info("running %s", " ".join(command[2:]))
    environment = {**os.environ, **(env or {})}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    for line in done.stderr.splitlines():
        log.info("%s", line)
    output: dict[str, Any] | None = None
    if done.stdout.strip():
        try:
            output = json.loads(done.stdout)
        except json.JSONDecodeError:
            log.warning("pipestate printed no JSON object: %s", done.stdout[:500])
    if done.returncode == 0:
        return output or {}
    last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "")
    code = done.returncode
    meaning = _FINAL.get(code) or _RETRYABLE.get(code) or "unexpected exit code"
    message = f"pipestate {arguments[0] if arguments else ''} exited {code} ({meaning}): {last}".rstrip(": ")
    if code in _FINAL:
        raise PipestateCommandRefused(message, code, output)
    raise PipestateCommandFailed(message, code, output)


def populate(config: str | os.PathLike[str] | None = None, dry_run: bool = False) -> dict[str, Any]:
    """`pipestate populate`: repair and extend the windows; its report."""
    return pipestate_command(["populate", *(["--dry-run"] if dry_run else [])], config)


def run_batches(
    config: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    workers: int = 1,
    worker: str | None = None,
) -> dict[str, Any]:
    """`pipestate run [--limit N] [--workers W]`: populate, then process up to `limit` batches.

    Fails (exit 5) when a batch of this run ended FAILED or lost its lease.
    `worker` only names the share in the log: mapped copies of this task all
    claim from the same table, so each takes different batches.
    """
    arguments = ["run", "--workers", str(workers)]
    if limit is not None:
        arguments += ["--limit", str(limit)]
    if worker is not None:
        log.info("worker share %s", worker)
    return pipestate_command(arguments, config)


def validate(config: str | os.PathLike[str] | None = None, require_coverage: bool = False) -> dict[str, Any]:
    """`pipestate validate`: fails when the table has a gap, an overlap or an invalid row."""
    return pipestate_command(["validate", *(["--require-coverage"] if require_coverage else [])], config)


def mirror(
    config: str | os.PathLike[str] | None = None, all_pipelines: bool = False, verify: bool = False
) -> dict[str, Any]:
    """`pipestate mirror [--all] [--verify]`: the state table and its events copied into Snowflake.

    Fails without retrying when --verify finds the copy different (exit 1)."""
    flags = [*(["--all"] if all_pipelines else []), *(["--verify"] if verify else [])]
    return pipestate_command(["mirror", *flags], config)


def day_asset(pipeline: str) -> Asset:
    """The Asset that `complete_day` updates: one event per local day whose windows are all COMPLETED.

    Schedule downstream DAGs on it (`schedule=[day_asset("orders")]`); each
    event's `extra` holds `pipeline`, `day`, `start`, `end` and `windows`.
    """
    return Asset(name=f"pipestate_{pipeline}_complete_day", uri=f"pipestate://{pipeline}/complete-day")


def _default_day(context: Mapping[str, Any], manager: PipelineStateManager) -> date:
    """The local day before the one the DAG run is for: a run early on D+1 announces D."""
    instant = context.get("data_interval_end") or context.get("logical_date") or context.get("run_after")
    if instant is None:
        instant = datetime.now().astimezone()
    return local_date_of(instant, manager.config.pipeline.tz) - timedelta(days=1)


def complete_day(
    config: str | os.PathLike[str] | None,
    day: str | date | None,
    context: Mapping[str, Any],
    asset: Asset | None = None,
    then_mirror: bool = False,
) -> dict[str, Any]:
    """Update the pipeline's day Asset if local `day` is complete, else skip the task.
    With `then_mirror`, a complete day is first mirrored into Snowflake (`pipestate mirror`),
    so that the asset event means the copy shows the day too.

    `day` is `YYYY-MM-DD` (templated in the operator); None means the local day
    before the DAG run's (see `_default_day`). A skipped task emits no asset
    event, so downstream DAGs run on complete days only.
    """
    with PipelineStateManager(config) as manager:
        the_day = day if day else _default_day(context, manager)
        state = manager.day_state(the_day)
        target = asset or day_asset(manager.pipeline)
    summary = state.to_dict()
    if not state.complete:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(state.counts.items())) or "no windows"
        raise AirflowSkipException(
            f"{state.pipeline} {state.day}: not complete ({counts}; "
            f"{summary['covered_minutes']} of {summary['day_minutes']} min covered); no asset event"
        )
    if then_mirror:
        summary["mirror"] = mirror(config)
    context["outlet_events"][target].extra = {
        key: summary[key] for key in ("pipeline", "day", "start", "end", "windows")
    }
    log.info(
        "%s %s: all %d window(s) COMPLETED; %s updated", state.pipeline, state.day, state.windows, target.uri
    )
    return summary


class PipestateOperator(BaseOperator):
    """Runs one `pipestate` command (`arguments`, e.g. `["status"]`) with --json; fails per its exit code."""

    template_fields: Sequence[str] = ("config", "arguments")

    def __init__(
        self,
        *,
        arguments: Sequence[str],
        config: str | None = None,
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.arguments, self.config, self.env = list(arguments), config, dict(env or {})

    def execute(self, context: Any) -> dict[str, Any]:
        return pipestate_command(self.arguments, self.config, self.env)


class PopulateOperator(PipestateOperator):
    """`pipestate populate [--dry-run]`."""

    def __init__(self, *, config: str | None = None, dry_run: bool = False, **kwargs: Any) -> None:
        super().__init__(arguments=["populate", *(["--dry-run"] if dry_run else [])], config=config, **kwargs)


class RunBatchesOperator(PipestateOperator):
    """`pipestate run --limit N --workers W`; map it (`.partial(...).expand(worker=[...])`) to spread work."""

    template_fields: Sequence[str] = ("config", "arguments", "worker")

    def __init__(
        self,
        *,
        config: str | None = None,
        limit: int | None = None,
        workers: int = 1,
        worker: str | None = None,
        **kwargs: Any,
    ) -> None:
        arguments = ["run", "--workers", str(workers), *(["--limit", str(limit)] if limit else [])]
        super().__init__(arguments=arguments, config=config, **kwargs)
        self.worker = worker

    def execute(self, context: Any) -> dict[str, Any]:
        if self.worker is not None:
            log.info("worker share %s", self.worker)
        return super().execute(context)


class ValidateOperator(PipestateOperator):
    """`pipestate validate [--require-coverage]`: a gate that fails on a gap, overlap or invalid row."""

    def __init__(self, *, config: str | None = None, require_coverage: bool = False, **kwargs: Any) -> None:
        flags = ["--require-coverage"] if require_coverage else []
        super().__init__(arguments=["validate", *flags], config=config, **kwargs)


class CompleteDayOperator(BaseOperator):
    """Emits an event of the pipeline's day Asset when local `day` is all COMPLETED; skips otherwise.

    Give it `outlets=[day_asset(pipeline)]` (the default when `pipeline` is given).
    """

    template_fields: Sequence[str] = ("config", "day")

    def __init__(
        self,
        *,
        config: str | None = None,
        day: str | None = None,
        pipeline: str | None = None,
        asset: Asset | None = None,
        mirror: bool = False,
        **kwargs: Any,
    ) -> None:
        if asset is None and pipeline is not None:
            asset = day_asset(pipeline)
        if asset is not None:
            kwargs.setdefault("outlets", [asset])
        super().__init__(**kwargs)
        self.config, self.day, self.asset, self.mirror = config, day, asset, mirror

    def execute(self, context: Any) -> dict[str, Any]:
        return complete_day(self.config, self.day, context, self.asset, then_mirror=self.mirror)


class MirrorOperator(PipestateOperator):
    """`pipestate mirror [--all] [--verify]`: copy the state table and its events into Snowflake."""

    def __init__(
        self, *, config: str | None = None, all_pipelines: bool = False, verify: bool = False, **kwargs: Any
    ) -> None:
        flags = [*(["--all"] if all_pipelines else []), *(["--verify"] if verify else [])]
        super().__init__(arguments=["mirror", *flags], config=config, **kwargs)
