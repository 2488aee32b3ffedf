"""A worker loop for Python callers: claim, heartbeat in the background, complete or fail.

    manager = PipelineStateManager("pipestate.toml")
    Worker(manager).run(lambda batch: copy_window(batch.start, batch.end))

The first SIGTERM (or SIGINT) lets the current batch finish and then stops;
a second one stops at once and releases the batch, so another worker can take
it without waiting for the lease to run out. A second signal that arrives while
a database call is under way gives the call STOP_GRACE seconds, then cuts its
connection, so a frozen network cannot keep the worker alive.

Heartbeats that cannot reach the database leave the lease in doubt: when the
lease would have run out without one succeeding, the handler is stopped with
LeaseInDoubt (another worker may take the batch from then on) and nothing more
is written for that batch.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import (
    LeaseInDoubt,
    LeaseLost,
    PipestateError,
    WorkerStopped,
    retryable,
)
from .retrying import store_retry

if TYPE_CHECKING:
    from ..manager import PipelineStateManager
    from ..ops.batch import Batch

__all__ = ["Worker", "WorkerStopped", "LeaseInDoubt", "RunSummary", "WindowOutcome"]

log = logging.getLogger("pipestate.run.worker")

# After a second stop signal, how long a database call under way may still take.
STOP_GRACE = 5.0
# How long a worker rides out transient state-database errors by default (a full lock
# queue on Snowflake, a restart): seconds, beside the `store_retries` attempts.
STORE_PATIENCE = 120.0
# How long stopping waits for a heartbeat thread (one stuck on the network is left behind).
_HEARTBEAT_JOIN = 2.0

T = TypeVar("T")


@dataclass
class RunSummary:
    """Counts of attempts, and which batches ended the run failed or lost their lease."""

    completed: int = 0
    failed: int = 0
    lost: int = 0
    released: int = 0
    failed_ids: set[str] = field(default_factory=set)  # failed, and not completed later in the run
    lost_ids: set[str] = field(default_factory=set)

    @property
    def processed(self) -> int:
        return self.completed + self.failed + self.lost

    @property
    def ok(self) -> bool:
        """No batch of the run ended FAILED or lost its lease (`pipestate run` exits 5 otherwise)."""
        return not self.failed_ids and not self.lost_ids

    def record(self, outcome: str, batch_id: str) -> None:
        """Count one settled batch: "completed", "failed" or "lost"."""
        setattr(self, outcome, getattr(self, outcome) + 1)
        if outcome == "completed":
            self.failed_ids.discard(batch_id)
        elif outcome == "failed":
            self.failed_ids.add(batch_id)
        elif outcome == "lost":
            self.lost_ids.add(batch_id)

    def merge(self, other: RunSummary) -> None:
        """Add another worker's summary to this one."""
        self.completed += other.completed
        self.failed += other.failed
        self.lost += other.lost
        self.released += other.released
        self.failed_ids |= other.failed_ids
        self.lost_ids |= other.lost_ids


@dataclass
class WindowOutcome:
    """What a run handler says of one batch of its run: the columns to write with the
    completion, or the error that fails it (LeaseLost: the batch was lost), and any details
    for the completion's audit event (a window reloaded alone says so)."""

    values: dict[str, Any] | None = None
    error: BaseException | None = None
    details: dict[str, Any] | None = None


class _Heartbeat(threading.Thread):
    """Extends the lease every `interval` seconds until stopped or the claim is lost.

    A timer runs out when the lease would, unless a heartbeat succeeded
    meanwhile; then `in_doubt` is set and `on_doubt` called (from the timer's
    thread: the heartbeat thread itself may be stuck in a call).
    """

    def __init__(
        self,
        manager: PipelineStateManager,
        batch: Batch | list[Batch],
        interval: float,
        lease: float,
        on_doubt: Callable[[], None],
    ) -> None:
        # A run of windows: every batch of it beats in each round (each has its own lease).
        self.batches = list(batch) if isinstance(batch, list) else [batch]
        self.batch = self.batches[0]
        super().__init__(name=f"heartbeat-{self.batch.batch_id}", daemon=True)
        self.manager, self.interval, self.lease = manager, interval, lease
        self.stopped = threading.Event()
        self.lost: LeaseLost | None = None
        self.in_doubt = False
        self._on_doubt = on_doubt
        self._timer: threading.Timer | None = None
        self._arm(time.monotonic())

    def _arm(self, since: float) -> None:
        # Counted from before the call that (re)started the lease: never later than its expiry.
        if self._timer is not None:
            self._timer.cancel()
        remaining = max(since + self.lease - time.monotonic(), 0.0)
        self._timer = threading.Timer(remaining, self._doubt)
        self._timer.daemon = True
        self._timer.start()

    def _doubt(self) -> None:
        if self.stopped.is_set():
            return
        self.in_doubt = True
        log.error(
            "no heartbeat for %s reached the database within the lease",
            self.batch.batch_id,
            extra=_about(self.batch),
        )
        self._on_doubt()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            if self.in_doubt:
                return  # the batch is being given up: never renew a lease about to be abandoned
            started = time.monotonic()
            reached = True
            for batch in list(self.batches):
                try:
                    self.manager.heartbeat(batch.batch_id, batch.worker_id, batch.claim_token)
                except LeaseLost as err:
                    # Fenced: whatever the run writes for it later is refused too.
                    self.lost = err
                    self.batches.remove(batch)
                    log.error("lost the claim on %s: %s", batch.batch_id, err, extra=_about(batch))
                except PipestateError as err:  # a database blip: try again next beat
                    reached = False
                    log.warning(
                        "heartbeat for %s failed, will retry: %s", batch.batch_id, err, extra=_about(batch)
                    )
            if not self.batches:
                return
            if reached and not self.stopped.is_set() and not self.in_doubt:
                self._arm(started)

    def stop(self) -> None:
        self.stopped.set()
        if self._timer is not None:
            self._timer.cancel()
        self.join(timeout=_HEARTBEAT_JOIN)


def _raise_in(thread_id: int, kind: type[BaseException]) -> None:
    """Raise `kind` in another Python thread at its next bytecode (how a lease in
    doubt stops a handler running in the worker's thread)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(kind))


class Worker:
    """Claims batches of one pipeline and runs your function on each.

    An error of the state database itself (from claim, complete, fail or
    release) is not a failed batch: a transient one (a lock timeout, a busy
    database, a dropped connection, Snowflake's full lock queue) is tried again,
    `store_backoff` seconds apart and doubling (jittered), at least `store_retries`
    times and for up to `store_patience` seconds; any other one stops the loop and
    propagates.
    """

    def __init__(
        self,
        manager: PipelineStateManager,
        worker_id: str | None = None,
        heartbeat_interval: float | None = None,
        *,
        store_retries: int = 5,
        store_backoff: float = 0.5,
        store_patience: float | None = None,
        within: tuple[datetime, datetime] | None = None,
    ) -> None:
        self.manager = manager
        self.within = within  # claim only windows starting in this UTC range (one local day)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.lease = manager.config.concurrency.lease.total_seconds()
        # At most a third of the lease, so two beats can be late before it lapses.
        ceiling = self.lease / 3
        self.heartbeat_interval = min(heartbeat_interval or ceiling, ceiling)
        self.store_retries = store_retries
        self.store_backoff = store_backoff
        self.store_patience = STORE_PATIENCE if store_patience is None else store_patience
        self.stopping = False
        self.released = 0  # batches given back unfinished by a second stop signal
        self._signals = 0
        self._interruptible = False
        self._cut: threading.Timer | None = None
        self._in_doubt = False  # the current batch's lease: no heartbeat reached the database in time
        # Windows taken by one claim ([concurrency] claim_batch) and not started yet.
        self._queued: list[Batch] = []

    # -- the state database, transient errors retried -----------------------------

    def _store_call(self, what: str, call: Callable[[], T]) -> T:
        """`call()`, tried again after a transient error (bounded, jittered backoff): at least
        `store_retries` attempts, and on for up to `store_patience` seconds."""
        return store_retry(
            what,
            call,
            self.store_retries,
            self.store_backoff,
            self._pause,
            give_up=lambda: self.stopping,
            patience=self.store_patience,
        )

    def _pause(self, seconds: float) -> None:
        """Sleep, waking early when a stop signal arrives."""
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))

    def _claim(self) -> Batch | None:
        """The next window: one queued by an earlier claim of several, else a new claim
        of `[concurrency] claim_batch` windows."""
        while self._queued:
            queued = self._queued.pop(0)
            if self._still_held(queued):
                return queued
        within = self.within
        taken = self._store_call("claim", lambda: self.manager.claim_batches(self.worker_id, within=within))
        if not taken:
            return None
        self._queued = taken[1:]
        return taken[0]

    def _still_held(self, queued: Batch) -> bool:
        """A queued window that waited past a third of its lease is heartbeated before
        it starts; False if its claim was taken over meanwhile (it is skipped)."""
        waited = (datetime.now(UTC) - queued.claimed_at).total_seconds()
        if waited < self.lease / 3:
            return True
        try:
            self._store_call(
                "heartbeat",
                lambda: self.manager.heartbeat(queued.batch_id, self.worker_id, queued.claim_token),
            )
        except LeaseLost:
            log.warning("queued batch %s was taken over before it started; skipped", queued.batch_id)
            return False
        return True

    def _release_queued(self) -> None:
        """Give back the windows claimed but not started (a stop, a limit)."""
        queued, self._queued = self._queued, []
        for batch in queued:
            with suppress(LeaseLost):
                self._release(batch)

    def _complete(self, claimed: Batch, values: dict[str, Any] | None = None) -> None:
        self._store_call(
            "complete",
            lambda: self.manager.complete(claimed.batch_id, self.worker_id, claimed.claim_token, values),
        )

    def _fail(self, claimed: Batch, err: BaseException) -> None:
        message = f"{type(err).__name__}: {err}"[:4000]
        answer = retryable(err)
        self._store_call(
            "fail",
            lambda: self.manager.fail(
                claimed.batch_id, self.worker_id, message, claimed.claim_token, retryable=answer
            ),
        )

    def _release(self, claimed: Batch) -> None:
        self._store_call(
            "release", lambda: self.manager.release(claimed.batch_id, self.worker_id, claimed.claim_token)
        )
        self.released += 1

    @contextmanager
    def _beating(self, claimed: Batch | list[Batch]) -> Iterator[None]:
        """Heartbeats in a thread, and a second stop signal allowed to interrupt,
        while the caller's code runs; neither during a claim, complete, fail or
        release, which would leave the batch held until its lease ran out.
        A lease in doubt raises LeaseInDoubt in the caller's code."""
        caller = threading.get_ident()
        self._in_doubt = False

        def stop_caller() -> None:
            self._in_doubt = True
            if self._interruptible:
                _raise_in(caller, LeaseInDoubt)

        beat = _Heartbeat(self.manager, claimed, self.heartbeat_interval, self.lease, stop_caller)
        beat.start()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False
            beat.stop()

    def _give_up(self, claimed: Batch) -> None:
        """Release a batch this worker gives up on, so it does not sit IN_PROGRESS for a whole
        lease with nobody on it. Fenced: if another worker took it over meanwhile, the release
        changes nothing (LeaseLost), and a database that cannot be reached leaves it to expire."""
        try:
            self.manager.release(claimed.batch_id, self.worker_id, claimed.claim_token)
        except PipestateError as err:
            log.warning("could not release %s after giving it up: %s", claimed.batch_id, err)
        else:
            log.warning("released %s: its lease was in doubt; another worker can take it", claimed.batch_id)

    def _doubted(self, claimed: Batch) -> LeaseInDoubt:
        return LeaseInDoubt(
            f"batch {claimed.batch_id}: no heartbeat reached the database within the lease; "
            "stopped without writing"
        )

    # -- one batch ----------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[Batch | None]:
        """Claim one batch and yield it (None if nothing is claimable).

        On a normal exit the batch is completed; on an exception it is failed
        with the exception's text and the exception propagates: one whose
        `retryable` is False (see pipestate.errors) fails it for good at once,
        its retries unspent; any other counts one failed attempt. On
        WorkerStopped it is released. An error of the claim itself propagates
        before anything is yielded.
        """
        claimed = self._claim()
        if claimed is None:
            yield None
            return
        try:
            with self._beating(claimed):
                yield claimed
        except WorkerStopped:
            self._release(claimed)
            raise
        except BaseException as err:
            if self._in_doubt:  # given up: released if still ours, else nothing is written
                self._give_up(claimed)
                raise self._doubted(claimed) from err
            self._fail(claimed, err)
            raise
        self._complete(claimed)

    def _process(self, claimed: Batch, handler: Callable[[Batch], Any]) -> str:
        """Run the handler on a claimed batch and settle it: "completed", "failed",
        "lost" or "released". Only the handler's errors fail the batch; an error
        of the state database while settling it propagates."""
        try:
            with self._beating(claimed):
                # A dict the handler returns (the runner's last step columns) is written
                # with the completion: one state-table transaction instead of two.
                values = handler(claimed)
        except WorkerStopped:
            return _settled(partial(self._release, claimed), "released")
        except BaseException as err:
            if self._in_doubt:  # given up: released if still ours, else nothing is written
                self._give_up(claimed)
                log.error("%s", self._doubted(claimed), extra=_about(claimed, self.worker_id))
                return "lost"
            outcome = _settled(partial(self._fail, claimed, err), "failed")
            if not isinstance(err, Exception):
                raise  # KeyboardInterrupt, SystemExit: the batch is failed, and they go on up
            if outcome == "failed":
                log.warning(
                    "batch %s failed: %s: %s",
                    claimed.batch_id,
                    type(err).__name__,
                    err,
                    extra=_about(claimed, self.worker_id, getattr(err, "step", None)),
                )
            return outcome
        finals = values if isinstance(values, dict) else None
        return _settled(partial(self._complete, claimed, finals), "completed")

    # -- the loop -----------------------------------------------------------------

    def run(
        self,
        handler: Callable[[Batch], Any],
        limit: int | None = None,
        wait: bool = False,
        poll_interval: float = 5.0,
        keep_going: Callable[[], bool] | None = None,
        *,
        run_handler: Callable[[list[Batch]], dict[str, WindowOutcome]] | None = None,
        claim_batch: int = 1,
    ) -> RunSummary:
        """Process batches until none is claimable (or `limit`, or a stop signal).

        With `wait`, keep polling for new work instead of returning when idle.
        `keep_going` is asked before each claim (e.g. a budget shared by
        several processes). A handler's exception fails that batch and the
        loop goes on; an error of the state database itself (see the class)
        stops the loop and propagates.

        With `run_handler`, up to `claim_batch` batches are claimed at a time and
        handed over together; it says per batch what became of it (WindowOutcome),
        and the completed ones are completed in one state-table transaction.
        """
        summary = RunSummary()
        released_before = self.released
        restore = self._install_signal_handlers()
        try:
            while not self.stopping and (limit is None or summary.processed < limit):
                if run_handler is not None:
                    room = claim_batch if limit is None else min(claim_batch, limit - summary.processed)
                    run = self._claim_run(room, keep_going)
                    if run is None:
                        break
                    if not run:
                        if not wait:
                            break
                        self._pause(poll_interval)
                        continue
                    settled = self._process_run(run, run_handler)
                    for outcome, batch_id in settled:
                        if outcome != "released":
                            summary.record(outcome, batch_id)
                    if any(outcome == "released" for outcome, _ in settled):
                        break
                    continue
                if keep_going is not None and not keep_going():
                    break
                claimed = self._claim()
                if claimed is None:
                    if not wait:
                        break
                    self._pause(poll_interval)
                    continue
                outcome = self._process(claimed, handler)
                if outcome == "released":
                    break
                summary.record(outcome, claimed.batch_id)
        finally:
            restore()
            self._release_queued()
        summary.released = self.released - released_before
        return summary

    # -- runs of windows ------------------------------------------------------------

    def _claim_run(self, count: int, keep_going: Callable[[], bool] | None) -> list[Batch] | None:
        """Up to `count` batches in one claim, in claim order ([] when none is claimable;
        None when `keep_going` said stop before the first). `keep_going` is asked once per
        window the claim may take."""
        if keep_going is not None:
            allowed = 0
            while allowed < count and keep_going():
                allowed += 1
            if not allowed:
                return None
            count = allowed
        within = self.within
        return self._store_call("claim", lambda: self.manager.claim_batches(self.worker_id, count, within))

    def _process_run(
        self, run: list[Batch], handler: Callable[[list[Batch]], dict[str, WindowOutcome]]
    ) -> list[tuple[str, str]]:
        """Run the handler on a run of claimed batches and settle each: (outcome, batch_id)."""
        try:
            with self._beating(run):
                results = handler(run)
        except WorkerStopped:
            return [
                (_settled(partial(self._release, claimed), "released"), claimed.batch_id) for claimed in run
            ]
        except BaseException as err:
            if self._in_doubt:
                for claimed in run:
                    log.error("%s", self._doubted(claimed))
                return [("lost", claimed.batch_id) for claimed in run]
            failed = [(_settled(partial(self._fail, c, err), "failed"), c.batch_id) for c in run]
            if not isinstance(err, Exception):
                raise
            log.warning("run of %d batches failed: %s: %s", len(run), type(err).__name__, err)
            return failed
        settled: list[tuple[str, str]] = []
        done: list[Batch] = []
        for claimed in run:
            result = results.get(claimed.batch_id) or WindowOutcome(
                error=RuntimeError("the run handler said nothing of this batch")
            )
            if isinstance(result.error, LeaseLost):
                log.error("%s", result.error)
                settled.append(("lost", claimed.batch_id))
            elif result.error is not None:
                outcome = _settled(partial(self._fail, claimed, result.error), "failed")
                if outcome == "failed":
                    log.warning(
                        "batch %s failed: %s: %s", claimed.batch_id, type(result.error).__name__, result.error
                    )
                settled.append((outcome, claimed.batch_id))
            else:
                done.append(claimed)
        if done:
            by_id = {claimed.batch_id: claimed for claimed in done}
            items = [
                (c.batch_id, c.claim_token, results[c.batch_id].values, results[c.batch_id].details)
                for c in done
            ]
            claimed_at: dict[str, datetime | None] = {c.batch_id: c.claimed_at for c in done}
            lost = self._store_call(
                "complete", lambda: self.manager.complete_many(self.worker_id, items, claimed_at)
            )
            for batch_id in by_id:
                if batch_id in lost:
                    log.error(
                        "batch %s: the claim was no longer current at completion; nothing changed", batch_id
                    )
                settled.append(("lost" if batch_id in lost else "completed", batch_id))
        return settled

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._signals += 1
            self.stopping = True
            if self._signals > 1 and self._interruptible:
                raise WorkerStopped(f"stopped by signal {signum}")
            if self._signals > 1 and self._cut is None:
                # In a claim, complete, fail or release: let it finish, unless it
                # hangs on the network; then cut its connection so it fails.
                self._cut = threading.Timer(STOP_GRACE, self.manager.interrupt)
                self._cut.daemon = True
                self._cut.start()
            log.info("signal %s: finishing the current batch, then stopping", signum)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._cut is not None:
                self._cut.cancel()
                self._cut = None

        return restore


def _about(batch: Batch, worker: str | None = None, step: str | None = None) -> dict[str, Any]:
    """What a log line about `batch` carries for `--log-format json` (batch_id, worker, step)."""
    about: dict[str, Any] = {"batch_id": batch.batch_id, "worker": worker or batch.worker_id}
    if step is not None:
        about["step"] = step
    return about


def _settled(settle: Callable[[], None], outcome: str) -> str:
    """`outcome` once `settle()` has run; "lost" if the claim was no longer current."""
    try:
        settle()
    except LeaseLost as lost:
        log.error("%s", lost)
        return "lost"
    return outcome
