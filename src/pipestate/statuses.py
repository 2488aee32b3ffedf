"""The statuses a batch moves through (contract section 4), as one StrEnum.

Members are strings: `Status.PENDING == "PENDING"`, and they are written to
and read from the state table as their text.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Status", "STATUS_ORDER"]


class Status(StrEnum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    SUPERSEDED = "SUPERSEDED"


# The order status reports and requeue choices list them in.
STATUS_ORDER: tuple[Status, ...] = tuple(Status)
