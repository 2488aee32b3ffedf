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
from types import FrameType
from typing import TYPE_CHECKING, Any

from .config import parse_duration
from .errors import LeaseLost, PipestateError

if TYPE_CHECKING:
    from .batches import Batch
    from .manager import PipelineStateManager

__all__ = ["Worker", "WorkerStopped", "RunSummary"]

log = logging.getLogger("pipestate.worker")


class WorkerStopped(Exception):
    """Raised inside the batch when a second stop signal asks to stop at once."""


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
    """Claims batches of one pipeline and runs your function on each."""

    def __init__(
        self,
        manager: PipelineStateManager,
        worker_id: str | None = None,
        heartbeat_interval: float | None = None,
    ) -> None:
        self.manager = manager
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        lease = parse_duration(manager.config.concurrency.lease).total_seconds()
        # At most a third of the lease, so two beats can be late before it lapses.
        ceiling = lease / 3
        self.heartbeat_interval = min(heartbeat_interval or ceiling, ceiling)
        self.stopping = False
        self.released = 0  # batches given back unfinished by a second stop signal
        self._signals = 0
        self._interruptible = False

    # -- one batch ----------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[Batch | None]:
        """Claim one batch and yield it (None if nothing is claimable).

        On a normal exit the batch is completed; on an exception it is failed
        with the exception's text and the exception propagates; on WorkerStopped
        it is released. Heartbeats run in a thread meanwhile.
        """
        claimed = self.manager.claim(self.worker_id)
        if claimed is None:
            yield None
            return
        beat = _Heartbeat(self.manager, claimed, self.heartbeat_interval)
        beat.start()
        try:
            # Only the caller's code may be interrupted by a second stop signal:
            # during a claim, complete, fail or release it would leave the batch
            # held until its lease ran out.
            self._interruptible = True
            try:
                yield claimed
            finally:
                self._interruptible = False
        except WorkerStopped:
            beat.stop()
            self.manager.release(claimed.batch_id, self.worker_id, claimed.claim_token)
            self.released += 1
            raise
        except BaseException as err:
            beat.stop()
            message = f"{type(err).__name__}: {err}"
            self.manager.fail(claimed.batch_id, self.worker_id, message[:4000], claimed.claim_token)
            raise
        else:
            beat.stop()
            self.manager.complete(claimed.batch_id, self.worker_id, claimed.claim_token)

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
        loop goes on.
        """
        summary = RunSummary()
        released_before = self.released
        restore = self._install_signal_handlers()
        try:
            while not self.stopping and (limit is None or summary.processed < limit):
                if keep_going is not None and not keep_going():
                    break
                try:
                    with self.batch() as claimed:
                        if claimed is None:
                            if not wait:
                                break
                            time.sleep(poll_interval)
                            continue
                        handler(claimed)
                    summary.completed += 1
                except WorkerStopped:
                    break
                except LeaseLost as err:
                    summary.lost += 1
                    log.error("%s", err)
                except Exception as err:  # noqa: BLE001 - the batch was failed; go on
                    summary.failed += 1
                    log.warning("batch failed: %s: %s", type(err).__name__, err)
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
