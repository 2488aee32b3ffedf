"""A worker loop for Python callers: claim, heartbeat in the background, complete or fail.

    manager = PipelineStateManager("pipestate.toml")
    Worker(manager).run(lambda batch: copy_window(batch.start, batch.end))

The first SIGTERM (or SIGINT) lets the current batch finish and then stops;
a second one stops at once and releases the batch, so another worker can take
it without waiting for the lease to run out.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from .config import parse_duration
from .errors import LeaseLost, PipestateError, WorkerStopped, retryable

if TYPE_CHECKING:
    from .batches import Batch
    from .manager import PipelineStateManager

__all__ = ["Worker", "WorkerStopped", "RunSummary"]

log = logging.getLogger("pipestate.worker")

T = TypeVar("T")


@dataclass
class RunSummary:
    completed: int = 0
    failed: int = 0
    lost: int = 0
    released: int = 0

    @property
    def processed(self) -> int:
        return self.completed + self.failed + self.lost


class _Heartbeat(threading.Thread):
    """Extends the lease every `interval` seconds until stopped or the claim is lost."""

    def __init__(self, manager: PipelineStateManager, batch: Batch, interval: float) -> None:
        super().__init__(name=f"heartbeat-{batch.batch_id}", daemon=True)
        self.manager, self.batch, self.interval = manager, batch, interval
        self.stopped = threading.Event()
        self.lost: LeaseLost | None = None

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.manager.heartbeat(self.batch.batch_id, self.batch.worker_id, self.batch.claim_token)
            except LeaseLost as err:
                self.lost = err
                log.error("lost the claim on %s: %s", self.batch.batch_id, err)
                return
            except PipestateError as err:  # a database blip: try again next beat
                log.warning("heartbeat for %s failed, will retry: %s", self.batch.batch_id, err)

    def stop(self) -> None:
        self.stopped.set()
        self.join()


class Worker:
    """Claims batches of one pipeline and runs your function on each.

    An error of the state database itself (from claim, complete, fail or
    release) is not a failed batch: a transient one (a lock timeout, a busy
    database, a dropped connection) is tried again up to `store_retries` times,
    `store_backoff` seconds apart and doubling; any other one stops the loop
    and propagates.
    """

    def __init__(
        self,
        manager: PipelineStateManager,
        worker_id: str | None = None,
        heartbeat_interval: float | None = None,
        *,
        store_retries: int = 5,
        store_backoff: float = 0.5,
    ) -> None:
        self.manager = manager
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        lease = parse_duration(manager.config.concurrency.lease).total_seconds()
        # At most a third of the lease, so two beats can be late before it lapses.
        ceiling = lease / 3
        self.heartbeat_interval = min(heartbeat_interval or ceiling, ceiling)
        self.store_retries = store_retries
        self.store_backoff = store_backoff
        self.stopping = False
        self.released = 0  # batches given back unfinished by a second stop signal
        self._signals = 0
        self._interruptible = False

    # -- the state database, transient errors retried -----------------------------

    def _store_call(self, what: str, call: Callable[[], T]) -> T:
        """`call()`, tried again after a transient error (bounded, with backoff)."""
        delay = self.store_backoff
        for attempt in range(1, self.store_retries + 1):
            try:
                return call()
            except PipestateError as err:
                if err.retryable is not True or attempt == self.store_retries or self.stopping:
                    raise
                log.warning("%s failed (%s), trying again in %.1fs: %s", what, type(err).__name__, delay, err)
            self._pause(delay)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")  # pragma: no cover - the last attempt returns or raises

    def _pause(self, seconds: float) -> None:
        """Sleep, waking early when a stop signal arrives."""
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))

    def _claim(self) -> Batch | None:
        return self._store_call("claim", lambda: self.manager.claim(self.worker_id))

    def _complete(self, claimed: Batch) -> None:
        self._store_call(
            "complete", lambda: self.manager.complete(claimed.batch_id, self.worker_id, claimed.claim_token)
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
    def _beating(self, claimed: Batch) -> Iterator[None]:
        """Heartbeats in a thread, and a second stop signal allowed to interrupt,
        while the caller's code runs; neither during a claim, complete, fail or
        release, which would leave the batch held until its lease ran out."""
        beat = _Heartbeat(self.manager, claimed, self.heartbeat_interval)
        beat.start()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False
            beat.stop()

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
            self._fail(claimed, err)
            raise
        self._complete(claimed)

    def _process(self, claimed: Batch, handler: Callable[[Batch], Any]) -> str:
        """Run the handler on a claimed batch and settle it: "completed", "failed",
        "lost" or "released". Only the handler's errors fail the batch; an error
        of the state database while settling it propagates."""
        try:
            with self._beating(claimed):
                handler(claimed)
        except WorkerStopped:
            return _settled(partial(self._release, claimed), "released")
        except BaseException as err:
            outcome = _settled(partial(self._fail, claimed, err), "failed")
            if not isinstance(err, Exception):
                raise  # KeyboardInterrupt, SystemExit: the batch is failed, and they go on up
            if outcome == "failed":
                log.warning("batch %s failed: %s: %s", claimed.batch_id, type(err).__name__, err)
            return outcome
        return _settled(partial(self._complete, claimed), "completed")

    # -- the loop -----------------------------------------------------------------

    def run(
        self,
        handler: Callable[[Batch], Any],
        limit: int | None = None,
        wait: bool = False,
        poll_interval: float = 5.0,
        keep_going: Callable[[], bool] | None = None,
    ) -> RunSummary:
        """Process batches until none is claimable (or `limit`, or a stop signal).

        With `wait`, keep polling for new work instead of returning when idle.
        `keep_going` is asked before each claim (e.g. a budget shared by
        several processes). A handler's exception fails that batch and the
        loop goes on; an error of the state database itself (see the class)
        stops the loop and propagates.
        """
        summary = RunSummary()
        released_before = self.released
        restore = self._install_signal_handlers()
        try:
            while not self.stopping and (limit is None or summary.processed < limit):
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
                setattr(summary, outcome, getattr(summary, outcome) + 1)
        finally:
            restore()
        summary.released = self.released - released_before
        return summary

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._signals += 1
            self.stopping = True
            if self._signals > 1 and self._interruptible:
                raise WorkerStopped(f"stopped by signal {signum}")
            log.info("signal %s: finishing the current batch, then stopping", signum)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore


def _settled(settle: Callable[[], None], outcome: str) -> str:
    """`outcome` once `settle()` has run; "lost" if the claim was no longer current."""
    try:
        settle()
    except LeaseLost as lost:
        log.error("%s", lost)
        return "lost"
    return outcome
