"""The runner: moves each claimed batch source -> stage -> target, resumably and exactly once.

Per batch: extract the window's records from the source as Arrow record batches
straight into the staged files (skipped when an earlier attempt already staged
them and the batch was not requeued to read the source again), then replace the
batch's rows in the target with the staged ones. Record counts are checked
between steps; each step's start, end, counts, bytes and location go into the
state table while the claim is held (fenced, so a worker that lost its lease
writes nothing).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from ..connectors.arrow import record_batches
from ..connectors.protocols import (
    BatchContext,
    LoadResult,
    Source,
    Stage,
    StagedData,
    Target,
)
from ..connectors.registry import build_source, build_stage, build_target
from ..errors import (
    ConfigError,
    CountMismatch,
    InjectedFailure,
    LeaseLost,
    PipestateError,
    StageChanged,
    StoreUnavailable,
)
from ..manager import PipelineStateManager
from ..ops.batch import Batch
from ..statuses import Status, Step
from .retrying import store_retry
from .worker import RunSummary, WindowOutcome, Worker

__all__ = ["PipelineRunner", "RunResult", "run_pipeline", "CountMismatch", "InjectedFailure"]

log = logging.getLogger("pipestate.run.runner")


class _Counted:
    """The source's chunks as Arrow record batches, counted as they stream into the stage."""

    def __init__(self, chunks: Iterable[Any]) -> None:
        self.chunks, self.count = chunks, 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for chunk in record_batches(self.chunks):
            self.count += chunk.num_rows
            yield chunk


def _now() -> datetime:
    return datetime.now(UTC)


class PipelineRunner:
    """Processes claimed batches with the configured source, stage and target."""

    def __init__(
        self,
        manager: PipelineStateManager,
        source: Source | None = None,
        stage: Stage | None = None,
        target: Target | None = None,
        inject_failures: float = 0.0,
        seed: int | None = None,
    ) -> None:
        config = manager.config
        if source is None and not config.source:
            raise ConfigError("[source] type: required to run the pipeline (see docs/connectors.md)")
        self.manager = manager
        self.source = source or build_source(config.source, base=config.base_dir)
        self.stage = stage or build_stage(config.stage, base=config.base_dir)
        self.target = target or build_target(config.target, base=config.base_dir)
        if not 0.0 <= inject_failures < 1.0:
            raise ConfigError("inject_failures: must be a fraction in [0, 1)")
        self.inject_failures = inject_failures
        self.random = random.Random(seed)

    def check(self) -> None:
        """Before any work: a connector that cannot work at all (a source path that does
        not exist) is a ConfigError now, not a failure of every batch later."""
        for connector in (self.source, self.stage, self.target):
            check = getattr(connector, "check", None)
            if callable(check):
                check()

    def close(self) -> None:
        """Release what the connectors hold (connection pools, clients), where they say how."""
        for connector in (self.source, self.stage, self.target):
            close = getattr(connector, "close", None)
            if callable(close):
                close()

    def context(self, batch: Batch) -> BatchContext:
        pipeline = self.manager.config.pipeline
        row = batch.row
        return BatchContext(
            batch_id=batch.batch_id,
            pipeline=batch.pipeline,
            start=batch.start,
            end=batch.end,
            local_date=batch.local_date or batch.start.astimezone(pipeline.tz).date(),
            timezone=row.get("window_timezone") or pipeline.timezone,
            source_id=row.get("source_id"),
            stage_id=row.get("stage_id"),
            target_id=row.get("target_id"),
        )

    def _record(self, batch: Batch, values: dict[str, Any], step: str | None = None) -> None:
        self.manager.record_step(batch.batch_id, batch.worker_id, values, batch.claim_token, step)

    def _chaos(self, step: str) -> None:
        if self.inject_failures and self.random.random() < self.inject_failures:
            raise InjectedFailure(f"injected failure in the {step} step (--inject-failures)")

    def process(self, batch: Batch) -> dict[str, Any]:
        """Run the batch's steps; raises on failure (the Worker then fails the batch). Returns
        the target step's columns, which the Worker writes with the completion."""
        try:
            return self._steps(batch)
        finally:
            # The batch's Arrow buffers are freed by now, but the allocator keeps their pages
            # for reuse: handed back after each batch, a long run stays at its working size
            # instead of creeping up by a batch's worth at a time (about 0.2 ms).
            pa.default_memory_pool().release_unused()

    def _steps(self, batch: Batch) -> dict[str, Any]:
        ctx = self.context(batch)
        staged = self._recorded_stage(batch, ctx) if batch.step_done(Step.STAGE) else None
        if staged is None:
            staged, stage_done = self._extract_and_stage(batch, ctx)
        else:
            log.info("%s: already staged at %s; not extracting again", batch.batch_id, staged.location)
            stage_done = {}
        # The stage step's end and the target step's start in one write: a state-table
        # transaction per step boundary, not two (hourly windows pay it 24 times a day).
        target_running = {
            "target_load_status": "RUNNING",
            "target_load_started_at": _now(),
            "target_load_completed_at": None,
        }
        self._record(batch, {**stage_done, **target_running}, step=Step.TARGET)
        if stage_done:
            self._chaos(Step.STAGE)
        return self._load(batch, ctx, staged)

    def _recorded_stage(self, batch: Batch, ctx: BatchContext) -> StagedData | None:
        """The stage an earlier attempt wrote, if it is still what the stage step recorded.
        A stage that differs is never loaded: after a failure the batch is extracted again;
        under `requeue --from-step target` (the user asked for that stage) it fails."""
        staged = self.stage.find(ctx)
        if staged is None:
            return None
        change = stage_change(batch.row, staged)
        if change is None:
            return staged
        if batch.row.get("target_load_status") == Status.PENDING:  # requeued --from-step target
            raise StageChanged(
                f"{batch.batch_id}: the staged data at {staged.location} changed since the stage step "
                f"({change}); not loaded: requeue without --from-step target to read the source again"
            )
        log.warning("%s: the staged data changed (%s); extracting again", batch.batch_id, change)
        return None

    def _extract_and_stage(self, batch: Batch, ctx: BatchContext) -> tuple[StagedData, dict[str, Any]]:
        location, query = self.source.describe(ctx)
        started = _now()
        self._record(
            batch,
            {
                "source_extract_status": "RUNNING",
                "source_extract_started_at": started,
                "source_extract_completed_at": None,
                "source_location": location,
                "source_query": query,
                "stage_write_status": "RUNNING",
                "stage_write_started_at": started,
                "stage_write_completed_at": None,
            },
            step=Step.SOURCE,
        )
        self._chaos(Step.SOURCE)
        return self._extract_and_stage_only(batch, ctx)

    def _extract_and_stage_only(self, batch: Batch, ctx: BatchContext) -> tuple[StagedData, dict[str, Any]]:
        counted = _Counted(self.source.extract(ctx))
        staged = self.stage.write(ctx, counted)
        finished = _now()
        if counted.count != staged.record_count:
            raise CountMismatch(
                f"{batch.batch_id}: source gave {counted.count} records, stage holds {staged.record_count}"
            )
        done = {
            "source_extract_status": "DONE",
            "source_extract_completed_at": finished,
            "source_record_count": counted.count,
            "stage_write_status": "DONE",
            "stage_write_completed_at": finished,
            "stage_record_count": staged.record_count,
            "stage_bytes": staged.bytes,
            "stage_location": staged.location,
            "stage_file_format": staged.file_format,
            "stage_file_count": staged.file_count,
            "stage_fingerprint": staged.fingerprint or None,
        }
        return staged, done

    def _load(self, batch: Batch, ctx: BatchContext, staged: StagedData) -> dict[str, Any]:
        return self._loaded(batch, staged, self.target.load(ctx, staged, self.stage))

    def _loaded(self, batch: Batch, staged: StagedData, result: LoadResult) -> dict[str, Any]:
        """The target step's columns after a load, once its count agrees with the stage's."""
        if result.record_count != staged.record_count:
            raise CountMismatch(
                f"{batch.batch_id}: staged {staged.record_count} records, target holds {result.record_count}"
            )
        self._chaos(Step.TARGET)  # after the load: the retry must replace, not duplicate
        return {
            "target_load_status": "DONE",
            "target_load_completed_at": _now(),
            "target_record_count": result.record_count,
            "target_rows_replaced": result.rows_deleted,
            "target_location": result.location,
            "target_load_id": result.load_id,
        }

    # -- runs of windows: one extract pass, a stage object per window, one load per run ----

    def process_run(self, batches: list[Batch]) -> dict[str, WindowOutcome]:
        """Move a run of claimed batches: each extracted and staged on its own (the source's
        parsed files shared by all), the step records of the run in one state-table
        transaction each, then the staged windows loaded in loads of up to
        `[run] max_run_records` records, each ONE target transaction. A window that fails
        fails alone: an error while extracting or staging it, a count that does not agree;
        when a load of several fails, each of its windows is loaded again on its own, so only
        the one at fault fails and the others' completion events say they were reloaded."""
        if len(batches) == 1 and not hasattr(self.target, "load_run"):
            return {batches[0].batch_id: self._single(batches[0])}
        try:
            return self._run_steps(batches)
        finally:
            pa.default_memory_pool().release_unused()

    def _single(self, batch: Batch) -> WindowOutcome:
        try:
            return WindowOutcome(values=self._steps(batch))
        except Exception as err:  # noqa: BLE001 - the Worker fails the batch with it
            return WindowOutcome(error=err)

    def _record_run(self, batches: list[Batch], values: dict[str, dict[str, Any]], step: Step) -> set[str]:
        items = [(b.batch_id, b.claim_token, values[b.batch_id]) for b in batches if b.batch_id in values]
        return self.manager.record_steps(batches[0].worker_id, items, step) if items else set()

    def _run_steps(self, batches: list[Batch]) -> dict[str, WindowOutcome]:
        out: dict[str, WindowOutcome] = {}
        contexts = {b.batch_id: self.context(b) for b in batches}
        staged: dict[str, StagedData] = {}
        for b in batches:
            try:  # the stage an earlier attempt wrote, if it is still what it recorded
                found = self._recorded_stage(b, contexts[b.batch_id]) if b.step_done(Step.STAGE) else None
            except Exception as err:  # noqa: BLE001 - StageChanged under --from-step target: that window fails
                out[b.batch_id] = WindowOutcome(error=err)
                continue
            if found is not None:
                staged[b.batch_id] = found
        todo = [b for b in batches if b.batch_id not in staged and b.batch_id not in out]
        started = _now()
        running: dict[str, dict[str, Any]] = {}
        for b in todo:
            location, query = self.source.describe(contexts[b.batch_id])
            running[b.batch_id] = {
                "source_extract_status": "RUNNING",
                "source_extract_started_at": started,
                "source_extract_completed_at": None,
                "source_location": location,
                "source_query": query,
                "stage_write_status": "RUNNING",
                "stage_write_started_at": started,
                "stage_write_completed_at": None,
            }
        self._lose(self._record_run(todo, running, Step.SOURCE), out)
        stage_done: dict[str, dict[str, Any]] = {}
        for b in todo:
            if b.batch_id in out:
                continue
            try:
                self._chaos(Step.SOURCE)
                staged[b.batch_id], stage_done[b.batch_id] = self._extract_and_stage_only(
                    b, contexts[b.batch_id]
                )
            except Exception as err:  # noqa: BLE001 - this window fails, the run goes on
                out[b.batch_id] = WindowOutcome(error=err)
        loading = [b for b in batches if b.batch_id not in out]
        target_running = {
            "target_load_status": "RUNNING",
            "target_load_started_at": _now(),
            "target_load_completed_at": None,
        }
        values = {b.batch_id: {**stage_done.get(b.batch_id, {}), **target_running} for b in loading}
        self._lose(self._record_run(loading, values, Step.TARGET), out)
        for b in loading:
            if b.batch_id not in out and b.batch_id in stage_done:
                try:
                    self._chaos(Step.STAGE)
                except InjectedFailure as err:
                    out[b.batch_id] = WindowOutcome(error=err)
        loading = [b for b in loading if b.batch_id not in out]
        for group in self._loads(loading, staged):
            self._load_group(group, contexts, staged, out)
        return out

    def _lose(self, lost: set[str], out: dict[str, WindowOutcome]) -> None:
        for batch_id in lost:
            out[batch_id] = WindowOutcome(
                error=LeaseLost(f"batch {batch_id}: the claim was no longer current; nothing changed")
            )

    def _loads(self, batches: list[Batch], staged: dict[str, StagedData]) -> Iterator[list[Batch]]:
        """The run cut into loads: windows added in claim order until a load holds
        `[run] max_run_records` staged records (a bigger window is a load of its own)."""
        budget = self.manager.config.run.max_run_records
        group: list[Batch] = []
        records = 0
        for b in batches:
            count = staged[b.batch_id].record_count
            if group and records + count > budget:
                yield group
                group, records = [], 0
            group.append(b)
            records += count
        if group:
            yield group

    def _load_group(
        self,
        group: list[Batch],
        contexts: dict[str, BatchContext],
        staged: dict[str, StagedData],
        out: dict[str, WindowOutcome],
    ) -> None:
        load_run = getattr(self.target, "load_run", None)
        items = [(contexts[b.batch_id], staged[b.batch_id]) for b in group]
        try:
            if load_run is not None:
                results = load_run(items, self.stage)
            else:
                results = [self.target.load(ctx, data, self.stage) for ctx, data in items]
        except Exception as err:  # noqa: BLE001 - found out window by window below
            if len(group) == 1:
                out[group[0].batch_id] = WindowOutcome(error=err)
                return
            log.warning("a load of %d batches failed (%s); loading each on its own", len(group), err)
            note = {"reloaded_alone": True, "run_load_error": f"{type(err).__name__}: {err}"[:500]}
            for b in group:
                self._load_group([b], contexts, staged, out)
                if out[b.batch_id].error is None:
                    out[b.batch_id].details = note
            return
        for b, result in zip(group, results, strict=True):
            try:
                out[b.batch_id] = WindowOutcome(values=self._loaded(b, staged[b.batch_id], result))
            except Exception as err:  # noqa: BLE001 - a count that does not agree fails that window
                out[b.batch_id] = WindowOutcome(error=err)


def stage_change(row: dict[str, Any], staged: StagedData) -> str | None:
    """How `staged` (the stage as found now) differs from what the batch's row recorded of
    it, in words; None when it agrees (a value the row did not record is not compared)."""
    recorded = {
        "records": (row.get("stage_record_count"), staged.record_count),
        "bytes": (row.get("stage_bytes"), staged.bytes),
        "fingerprint": (row.get("stage_fingerprint"), staged.fingerprint or None),
    }
    for name, (then, now) in recorded.items():
        if then is not None and now is not None and str(then) != str(now):
            return f"{name} {then} recorded, {now} now"
    return None


@dataclass
class RunResult:
    """What `run_pipeline` did."""

    created: int = 0
    superseded: int = 0
    summary: RunSummary = field(default_factory=RunSummary)
    seconds: float = 0.0
    records: int = 0


def _worker_process(
    config: Any,
    worker_id: str,
    once: bool,
    budget: Any,
    inject_failures: float,
    seed: int | None,
    results: Any,
    within: tuple[datetime, datetime] | None = None,
    log_setup: Callable[[], None] | None = None,
) -> None:
    if log_setup is not None:  # else Python's last-resort handler: warnings and up, on stderr
        log_setup()
    # Own process group: a Ctrl-C in the terminal reaches the parent only, which
    # forwards one SIGTERM per Ctrl-C (first: finish the batch; second: release it).
    os.setpgrp()
    try:
        with PipelineStateManager(config) as manager:
            runner = PipelineRunner(manager, inject_failures=inject_failures, seed=seed)
            try:
                summary = Worker(manager, worker_id, within=within).run(
                    runner.process,
                    limit=1 if once else None,
                    keep_going=_budget_taker(budget),
                    **_runs_of(runner),
                )
            finally:
                runner.close()
    except PipestateError as err:  # the state database failed: one line, not a traceback
        print(f"pipestate: worker {worker_id} stopped: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except Exception as err:  # noqa: BLE001 - a child never prints a raw traceback
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"pipestate: worker {worker_id} stopped: {type(err).__name__}: {first}", file=sys.stderr)
        sys.exit(3)
    results.put(summary)


def _runs_of(runner: PipelineRunner) -> dict[str, Any]:
    """The Worker's arguments for runs of windows when `[concurrency] claim_batch` > 1."""
    count = runner.manager.config.concurrency.claim_batch
    return {"run_handler": runner.process_run, "claim_batch": count} if count > 1 else {}


def _budget_taker(budget: Any) -> Callable[[], bool] | None:
    if budget is None:
        return None

    def take() -> bool:
        with budget.get_lock():
            if budget.value <= 0:
                return False
            budget.value -= 1
            return True

    return take


def run_pipeline(
    manager: PipelineStateManager,
    workers: int = 1,
    once: bool = False,
    limit: int | None = None,
    inject_failures: float = 0.0,
    seed: int | None = None,
    progress: Callable[[dict[str, int]], None] | None = None,
    worker_prefix: str | None = None,
    within: tuple[datetime, datetime] | None = None,
    log_setup: Callable[[], None] | None = None,
) -> RunResult:
    """Populate, then claim and process batches until none is claimable.

    `workers` > 1 runs that many processes (each its own connection and worker
    id); `once` gives each worker one batch; `limit` caps batches in total.
    `progress` is called with the status counts while work goes on. `within`
    (UTC `[low, high)`) processes only windows that start in it (one local day).
    `log_setup` (picklable) is called first in each worker process: how the caller
    set up logging, which a spawned process does not inherit.
    """
    if workers < 1:
        raise ConfigError("workers: must be at least 1")
    if limit is not None and limit < 1:
        raise ConfigError("limit: must be at least 1")
    began = time.monotonic()
    result = RunResult()
    # The connectors first: a missing [source], extra or source path is exit 2 with
    # nothing written, not an error after populate has already added windows.
    runner = PipelineRunner(manager, inject_failures=inject_failures, seed=seed)
    populated = False
    try:
        runner.check()
        # A database restarting (refused, starting up) is waited out, a few seconds at most.
        report = store_retry("populate", manager.populate_pipeline_batches)
        result.created, result.superseded = len(report.created), len(report.superseded)
        populated = True
        prefix = worker_prefix or manager.actor.removeprefix("pipestate@")
        if workers == 1:
            remaining = [limit]

            def keep_going() -> bool:
                if progress is not None:
                    progress(manager.counts())
                if remaining[0] is None:
                    return True
                remaining[0] -= 1
                return remaining[0] >= 0

            result.summary = Worker(manager, f"{prefix}/w1", within=within).run(
                runner.process, limit=1 if once else None, keep_going=keep_going, **_runs_of(runner)
            )
        else:
            result.summary = _run_processes(
                manager, workers, once, limit, inject_failures, seed, progress, prefix, within, log_setup
            )
    except PipestateError as err:
        if populated:  # say what was written before the failure
            created, superseded = result.created, result.superseded
            err.add_note(f"before it, populate had created {created} and superseded {superseded} window(s)")
        raise
    finally:
        runner.close()
    summary = result.summary
    if summary.failed_ids:
        # A batch one worker failed may have been retried and completed by another.
        now = manager.statuses(summary.failed_ids)
        summary.failed_ids = {
            batch_id for batch_id in summary.failed_ids if now.get(batch_id) == Status.FAILED
        }
    if progress is not None:
        progress(manager.counts())
    result.seconds = time.monotonic() - began
    return result


def _run_processes(
    manager: PipelineStateManager,
    workers: int,
    once: bool,
    limit: int | None,
    inject_failures: float,
    seed: int | None,
    progress: Callable[[dict[str, int]], None] | None,
    prefix: str,
    within: tuple[datetime, datetime] | None = None,
    log_setup: Callable[[], None] | None = None,
) -> RunSummary:
    context = multiprocessing.get_context("spawn")
    budget = context.Value("i", limit) if limit is not None else None
    results = context.Queue()
    processes = [
        context.Process(
            target=_worker_process,
            args=(
                manager.config,
                f"{prefix}/w{index + 1}",
                once,
                budget,
                inject_failures,
                None if seed is None else seed + index,
                results,
                within,
                log_setup,
            ),
            daemon=False,
        )
        for index in range(workers)
    ]
    for process in processes:
        process.start()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        while any(process.is_alive() for process in processes):
            try:
                if progress is not None:
                    with contextlib.suppress(StoreUnavailable):  # a restart: the next tick shows it
                        progress(manager.counts())
                for process in processes:
                    process.join(timeout=0.5)
            except KeyboardInterrupt:
                for process in processes:
                    if process.is_alive():
                        process.terminate()  # SIGTERM: finish the batch (a second one: release it)
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = RunSummary()
    while not results.empty():
        summary.merge(results.get())
    bad = [process.exitcode for process in processes if process.exitcode]
    if bad:
        log.error("%d worker process(es) exited with %s", len(bad), bad)
    return summary
