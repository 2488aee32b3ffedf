"""The statuses a batch moves through (contract section 4), as one StrEnum.

Members are strings: `Status.PENDING == "PENDING"`, and they are written to
and read from the state table as their text.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["EXHAUSTED", "REQUEUABLE", "STATUS_ORDER", "Status", "Step"]


class Status(StrEnum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    SUPERSEDED = "SUPERSEDED"


# The order status reports and requeue choices list them in.
STATUS_ORDER: tuple[Status, ...] = tuple(Status)

# What `requeue --status` may choose: every status but SUPERSEDED (quarantine's way out).
REQUEUABLE: tuple[Status, ...] = (Status.FAILED, Status.COMPLETED, Status.IN_PROGRESS, Status.PENDING)

# Not a status: the count, beside the statuses, of FAILED windows with no retries left.
EXHAUSTED = "EXHAUSTED"


class Step(StrEnum):
    """The steps a batch moves through in `run`, as the `current_step` column and
    `--from-step` name them."""

    SOURCE = "source"
    STAGE = "stage"
    TARGET = "target"
    DONE = "done"  # current_step once COMPLETED
