"""Bounded, jittered retries of calls on the state database that failed transiently (a
restart, a refused connection): the worker's claims and settlements, and `run`'s populate."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import PipestateError

__all__ = ["store_retry"]

T = TypeVar("T")
log = logging.getLogger("pipestate.run")

_MAX_DELAY = 30.0


def store_retry(
    what: str,
    call: Callable[[], T],
    retries: int = 5,
    backoff: float = 0.5,
    pause: Callable[[float], None] = time.sleep,
    give_up: Callable[[], bool] = lambda: False,
) -> T:
    """`call()`, tried up to `retries` times in all while it raises an error whose `retryable`
    is True; each wait doubles from `backoff` seconds (at most 30), jittered by +-50% so that
    workers cut off together do not come back together. Any other error, the last attempt's,
    or one raised once `give_up()` is true, propagates."""
    delay = backoff
    for attempt in range(1, retries + 1):
        try:
            return call()
        except PipestateError as err:
            if err.retryable is not True or attempt == retries or give_up():
                raise
            wait = delay * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not security
            log.warning("%s failed (%s), trying again in %.1fs: %s", what, type(err).__name__, wait, err)
        pause(wait)
        delay = min(delay * 2, _MAX_DELAY)
    raise AssertionError("unreachable")  # pragma: no cover - the last attempt returns or raises
