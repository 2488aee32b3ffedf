"""Pure planning for `regrid`: which windows of a range move to a new grid, and the new windows.

The PENDING and FAILED windows of the range are replaced by windows on the new
granularity's grid of each local day (the grid populate uses, from windows.py);
COMPLETED and IN_PROGRESS windows stay, and so does a window whose data has
reached the target (its rows there carry its batch id), and the new windows are
cut at the edges of every window that stays. A day whose windows are already on
the new grid is left alone. No database here: tests call it with plain tuples.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from .plans import Fill, fill_cells
from .statuses import Status
from .windows import Step, format_step, local_date_of, split_at_midnights

__all__ = ["MOVABLE", "Old", "RegridDay", "RegridPlan", "plan_regrid"]

MOVABLE = frozenset({Status.PENDING, Status.FAILED})
ORIGIN = "REGRID"


@dataclass(frozen=True, slots=True)
class Old:
    """An active window of the range as the regrid planner sees it."""

    batch_id: str
    start: datetime
    end: datetime
    status: str
    updated_at: datetime | None = None  # the write is guarded on it, as populate's is
    loaded: bool = False  # its data reached the target once: it stays, whatever its status


@dataclass
class RegridDay:
    """One local day that changes: the windows it loses and the windows it gets."""

    local_date: date
    before: list[Old] = field(default_factory=list)
    after: list[tuple[datetime, datetime]] = field(default_factory=list)
    stays: int = 0  # windows of the day that stay (COMPLETED, IN_PROGRESS, loaded)


@dataclass
class RegridPlan:
    step: Step
    start: datetime
    end: datetime
    days: list[RegridDay]
    fills: list[Fill]
    stayed: dict[str, int]  # why windows of the range stay -> how many

    @property
    def superseded(self) -> list[Old]:
        return [old for day in self.days for old in day.before]

    @property
    def created(self) -> int:
        return sum(len(day.after) for day in self.days)

    def reason(self) -> str:
        return f"regrid to {format_step(self.step)}: replaced by windows on the new grid"


def _merge(spans: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _subtract(
    spans: list[tuple[datetime, datetime]], holes: list[tuple[datetime, datetime]]
) -> list[tuple[datetime, datetime]]:
    """`spans` minus `holes` (both merged and sorted)."""
    out: list[tuple[datetime, datetime]] = []
    for start, end in spans:
        cursor = start
        for low, high in holes:
            if high <= cursor or low >= end:
                continue
            if low > cursor:
                out.append((cursor, low))
            cursor = max(cursor, high)
        if cursor < end:
            out.append((cursor, end))
    return out


def plan_regrid(
    windows: Iterable[Old], tz: ZoneInfo, step: Step, start: datetime, end: datetime
) -> RegridPlan:
    """The regrid of `[start, end)` onto `step`, from the active windows that share an
    instant with it. Only windows wholly inside the range move; the others stay."""
    movable: list[Old] = []
    staying: list[tuple[datetime, datetime]] = []
    stayed: dict[str, int] = {}
    stays_by_day: dict[date, int] = {}
    for window in windows:
        inside = start <= window.start and window.end <= end
        why = None
        if window.status not in MOVABLE:
            why = f"{window.status} windows stay"
        elif window.loaded:
            why = "loaded once: their rows in the target carry their batch id"
        elif not inside:
            why = "crossing the range's edge"
        if why is None:
            movable.append(window)
            continue
        stayed[why] = stayed.get(why, 0) + 1
        staying.append((window.start, window.end))
        day = local_date_of(window.start, tz)
        stays_by_day[day] = stays_by_day.get(day, 0) + 1
    stretches = _subtract(_merge((w.start, w.end) for w in movable), _merge(staying))
    fills = [
        Fill(day, piece_start, piece_end, day_start, day_end, step, ORIGIN)
        for stretch_start, stretch_end in stretches
        for day, piece_start, piece_end, day_start, day_end in split_at_midnights(
            stretch_start, stretch_end, tz
        )
    ]
    after: dict[date, list[tuple[datetime, datetime]]] = {}
    for day, _, cell_start, cell_end, _, _ in fill_cells(fills):
        after.setdefault(day, []).append((cell_start, cell_end))
    before: dict[date, list[Old]] = {}
    for window in movable:
        before.setdefault(local_date_of(window.start, tz), []).append(window)
    days: list[RegridDay] = []
    unchanged: set[date] = set()
    for day in sorted(set(before) | set(after)):
        old, new = before.get(day, []), after.get(day, [])
        if sorted((w.start, w.end) for w in old) == new:
            unchanged.add(day)  # already on the new grid: nothing to do
            continue
        days.append(
            RegridDay(day, sorted(old, key=lambda w: (w.start, w.end)), new, stays_by_day.get(day, 0))
        )
    if unchanged:
        fills = [fill for fill in fills if fill.local_date not in unchanged]
    return RegridPlan(step, start, end, days, fills, stayed)
