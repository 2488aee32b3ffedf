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
    patience: float = 0.0,
) -> T:
    """`call()`, tried again while it raises an error whose `retryable` is True: at least
    `retries` attempts in all, and on for up to `patience` seconds (a full lock queue on
    Snowflake clears in seconds, not in five tries). Each wait doubles from `backoff` seconds
    (at most 30), jittered by +-50% so that workers cut off together do not come back
    together. Any other error, the last attempt's, or one raised once `give_up()` is true,
    propagates."""
    delay = backoff
    began = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except PipestateError as err:
            patient = time.monotonic() - began < patience
            if err.retryable is not True or give_up() or (attempt >= retries and not patient):
                raise
            wait = delay * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not security
            log.warning("%s failed (%s), trying again in %.1fs: %s", what, type(err).__name__, wait, err)
        pause(wait)
        delay = min(delay * 2, _MAX_DELAY)
