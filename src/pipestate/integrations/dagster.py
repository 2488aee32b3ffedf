"""Dagster for pipestate: a resource, and a daily-partitioned asset whose partitions are local days.

A partition is one local day in the pipeline's own time zone. Materializing it
runs that day through pipestate: populate, then only that day's batches
(requeued first, so a re-materialization reads the source again). Dagster shows
per-day status; pipestate guarantees the windows inside the day (no gap, no
overlap, each loaded exactly once).

    from pipestate.integrations.dagster import PipestateResource, pipestate_daily_asset

    events = pipestate_daily_asset("pipestate.toml")
    resource = PipestateResource(config_path="pipestate.toml")
    defs = Definitions(assets=[events], resources={"pipestate": resource})

Install with `pip install "pipestate[dagster]"`.
"""

# No `from __future__ import annotations`: Dagster reads the asset function's annotations at runtime.

import os
from datetime import date, timedelta
from typing import Any

try:
    from dagster import (
        AssetExecutionContext,
        AssetsDefinition,
        ConfigurableResource,
        DailyPartitionsDefinition,
        Failure,
        MaterializeResult,
        MetadataValue,
        asset,
    )
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'pipestate.integrations.dagster needs Dagster: pip install "pipestate[dagster]"'
    ) from err

from ..config import Config, load_config
from ..manager import PipelineStateManager
from ..ops.days import DayState
from ..run.days import DayRun, run_day
from ..statuses import Status
from ..windows import day_bounds, local_date_of

__all__ = ["PipestateResource", "daily_partitions", "pipestate_daily_asset"]


class PipestateResource(ConfigurableResource):  # type: ignore[misc]
    """One pipestate pipeline, by its config file.

    `workers` is how many processes run a day's batches; `requeue` (default on)
    makes a materialization of a day that already ran read its source again.
    """

    config_path: str
    workers: int = 1
    requeue: bool = True
    mirror_after_day: bool = False  # mirror the state table into Snowflake once a day completes

    def manager(self) -> PipelineStateManager:
        """A manager for the pipeline; close it (or use it in a `with`)."""
        return PipelineStateManager(self.config_path)

    def populate(self, dry_run: bool = False) -> dict[str, Any]:
        """`populate`'s summary: windows created, superseded, gaps, overlaps."""
        with self.manager() as manager:
            return manager.populate_pipeline_batches(dry_run=dry_run).summary()

    def day_state(self, day: str | date) -> DayState:
        """Where local `day` stands (counts by status, coverage, complete or not)."""
        with self.manager() as manager:
            return manager.day_state(day)

    def mirror(self, all_pipelines: bool = False, verify: bool = False) -> dict[str, Any]:
        """`pipestate mirror`'s JSON: the state table and its events copied into Snowflake ([mirror])."""
        from ..ops.mirror import mirror

        with self.manager() as manager:
            return mirror(manager.context, all_pipelines=all_pipelines, verify=verify).as_json()

    def run_day(self, day: str | date) -> DayRun:
        """Populate, requeue the day's finished windows (if `requeue`), run the day's batches."""
        with self.manager() as manager:
            return run_day(manager, day, requeue=self.requeue, workers=self.workers)


def daily_partitions(config: Config | str | os.PathLike[str]) -> DailyPartitionsDefinition:
    """One partition per local day of the pipeline, in its zone, from its first day.

    With a configured `end`, the last partition is the day before it; without,
    the last complete local day (Dagster adds a day as each one ends).
    """
    if not isinstance(config, Config):
        config = load_config(config)
    pipeline = config.pipeline
    first = local_date_of(pipeline.start_utc, pipeline.tz)
    end_date = None
    if pipeline.end_utc is not None:
        # Dagster's end_date is exclusive: the day `end` falls in, unless `end` is its midnight.
        last = local_date_of(pipeline.end_utc, pipeline.tz)
        end_date = last if day_bounds(last, pipeline.tz)[0] == pipeline.end_utc else last + timedelta(days=1)
    return DailyPartitionsDefinition(
        start_date=first.isoformat(),
        end_date=end_date.isoformat() if end_date else None,
        timezone=pipeline.timezone,
    )


def pipestate_daily_asset(
    config_path: str | os.PathLike[str],
    *,
    name: str | None = None,
    resource_key: str = "pipestate",
    **asset_kwargs: Any,
) -> AssetsDefinition:
    """A daily-partitioned asset (named after the pipeline) that runs each local day through pipestate.

    The partitions come from the config (`daily_partitions`); the work from the
    resource under `resource_key` (with `mirror_after_day`, a complete day is then
    mirrored into Snowflake, see `pipestate mirror`). A day whose windows do not all end COMPLETED
    fails its materialization, naming the batches. Further keyword arguments go
    to `@asset` (group_name, key_prefix, description, ...).
    """
    config = load_config(config_path)
    pipeline = config.pipeline
    asset_kwargs.setdefault(
        "description", f"pipestate pipeline {pipeline.name}: a partition per local day ({pipeline.timezone})"
    )

    @asset(
        name=name or config.pipeline.name,
        partitions_def=daily_partitions(config),
        required_resource_keys={resource_key},
        **asset_kwargs,
    )
    def _day(context: AssetExecutionContext) -> MaterializeResult:
        resource: PipestateResource = getattr(context.resources, resource_key)
        runs = []
        for key in context.partition_keys:
            done = resource.run_day(key)
            context.log.info(
                f"{key}: requeued {len(done.requeued)}, completed {done.result.summary.completed} batch(es); "
                f"{done.state.windows} window(s): {done.state.counts}"
            )
            runs.append(done)
        bad = [run for run in runs if not run.state.complete]
        if bad:
            raise Failure(
                description="; ".join(_why_incomplete(run) for run in bad),
                metadata=_metadata(runs),
            )
        metadata = _metadata(runs)
        if resource.mirror_after_day:
            mirrored = resource.mirror()
            context.log.info(
                f"mirrored {mirrored['rows']} state row(s), {mirrored['events']} event(s) "
                f"into {mirrored['tables']['state']}"
            )
            metadata["mirrored_rows"] = mirrored["rows"]
            metadata["mirror_mark"] = mirrored["mark"] or ""
        return MaterializeResult(metadata=metadata)

    return _day


def _why_incomplete(run: DayRun) -> str:
    state, summary = run.state, run.result.summary
    counts = ", ".join(f"{k} {v}" for k, v in sorted(state.counts.items())) or "no windows"
    failed = sorted(summary.failed_ids | summary.lost_ids) or state.not_completed
    shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
    return f"{state.day}: not complete ({counts}){': ' + shown if shown else ''}"


def _metadata(runs: list[DayRun]) -> dict[str, Any]:
    first, last = runs[0].state, runs[-1].state
    return {
        "pipeline": first.pipeline,
        "days": MetadataValue.json([run.to_dict() for run in runs]),
        "windows": sum(run.state.windows for run in runs),
        "completed_windows": sum(run.state.counts.get(Status.COMPLETED, 0) for run in runs),
        "requeued": sum(len(run.requeued) for run in runs),
        "batches_completed": sum(run.result.summary.completed for run in runs),
        "start": first.start.isoformat(),
        "end": last.end.isoformat(),
    }
