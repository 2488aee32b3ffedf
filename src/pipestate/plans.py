"""What a plan is made of: the settings it is made under, the windows it reads, the gaps,
resolutions and fills it finds, its analysis; and the contract's vocabulary of gaps (section 5).
Pure data and small pure functions; the planner that makes a plan is in `planning.py`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from .windows import (
    DayStep,
    Step,
    day_bounds,
    day_cells,
    local_date_of,
    split_at_midnights,
)


class UnsortedInput(Exception):
    """The rows did not arrive sorted by (start, end): the caller must sort them."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What the planner needs from the configuration and the clock."""

    tz: ZoneInfo
    step: Step  # configured granularity: new work at the edges uses it
    start: datetime  # first instant to cover (UTC)
    end: datetime | None  # configured exclusive end, if any
    horizon: datetime  # now - lag: nothing is created that ends later
    now: datetime  # database clock, to judge leases

    @property
    def stop(self) -> datetime:
        """Where coverage stops: the configured end, or the horizon if earlier."""
        return self.horizon if self.end is None else min(self.end, self.horizon)

    @property
    def covered_stop(self) -> datetime:
        """Where a fully populated pipeline's windows end: `stop`, or the last
        boundary of the configured grid before the horizon."""
        if self.cut_at_stop:
            return self.stop
        day = local_date_of(self.stop, self.tz)
        day_start, day_end = day_bounds(day, self.tz)
        return max(floor_to_grid(self.stop, day_start, day_end, self.step), self.start)

    @property
    def cut_at_stop(self) -> bool:
        """True when `stop` is the configured end (cut the last window there);
        False when it is the horizon (leave the unfinished grid cell for later)."""
        return self.end is not None and self.end <= self.horizon


@dataclass(frozen=True, slots=True)
class Window:
    """An active row as the planner sees it."""

    batch_id: str
    start: datetime
    end: datetime
    status: str
    updated_at: datetime | None
    created_at: datetime | None
    lease_expires_at: datetime | None

    def overlaps(self, other: Window) -> bool:
        return self.start < other.end and other.start < self.end


@dataclass(frozen=True, slots=True)
class Gap:
    start: datetime
    end: datetime
    kind: str  # missing_day | start_of_day | end_of_day | between_windows
    local_date: date


@dataclass(frozen=True, slots=True)
class Resolution:
    kept: Window
    superseded: Window
    reason: str


@dataclass(frozen=True, slots=True)
class InvalidRow:
    batch_id: str
    reason: str
    active: bool  # still treated as an active window (e.g. an unknown status)


@dataclass(frozen=True, slots=True)
class Fill:
    """One stretch of one local day to fill with windows on `step`'s grid."""

    local_date: date
    start: datetime
    end: datetime
    day_start: datetime
    day_end: datetime
    step: Step
    origin: str  # GAP_FILL or SCHEDULED


@dataclass(frozen=True, slots=True)
class NewWindow:
    local_date: date
    sequence_in_day: int  # 1-based position on the day's grid
    start: datetime
    end: datetime
    step: Step
    origin: str


@dataclass
class Analysis:
    active_windows: int = 0
    first_start: datetime | None = None
    last_end: datetime | None = None
    distribution: Counter[int] = field(default_factory=Counter)  # seconds -> count
    by_day: dict[date, Counter[int]] = field(default_factory=dict)

    @property
    def dominant_seconds(self) -> int | None:
        return dominant(self.distribution)


@dataclass
class Plan:
    settings: Settings
    analysis: Analysis
    gaps: list[Gap]
    resolutions: list[Resolution]
    invalid: list[InvalidRow]
    fills: list[Fill]
    kept_dominant: dict[date, Step]

    def new_windows(self) -> Iterator[NewWindow]:
        """The windows to create, in time order, computed lazily from the fills."""
        for cell in fill_cells(self.fills):
            yield NewWindow(*cell)

    def estimated_new_windows(self) -> int:
        """About how many windows the fills make (exact on a plain grid)."""
        total = 0
        for fill in self.fills:
            if isinstance(fill.step, DayStep):
                total += 1
            else:
                total += -(-(fill.end - fill.start) // fill.step)
        return total

    @property
    def changes_anything(self) -> bool:
        return bool(self.fills or self.resolutions)


# A new window as a plain tuple, the fields of NewWindow: for the million-row path.
Cell = tuple[date, int, datetime, datetime, Step, str]


def fill_cells(fills: Iterable[Fill]) -> Iterator[Cell]:
    """The windows of `fills`, in order, as `Cell` tuples."""
    for fill in fills:
        day, step, origin = fill.local_date, fill.step, fill.origin
        for k, start, end in day_cells(fill.day_start, fill.day_end, step, fill.start, fill.end):
            yield (day, k + 1, start, end, step, origin)


def dominant(counter: Counter[int]) -> int | None:
    """Most frequent duration; a tie goes to the longer one."""
    if not counter:
        return None
    return max(counter.items(), key=lambda item: (item[1], item[0]))[0]


def _unit_length(unit: Step) -> float:
    return float("inf") if isinstance(unit, DayStep) else unit.total_seconds()


def dominant_unit(counter: Counter[Step]) -> Step | None:
    if not counter:
        return None
    return max(counter.items(), key=lambda item: (item[1], _unit_length(item[0])))[0]


# The contract's kinds of gap (section 5), in the order reports list them.
GAP_KINDS = ("missing_day", "start_of_day", "end_of_day", "between_windows")


def contract_gaps(holes: Iterable[tuple[datetime, datetime]], settings: Settings) -> list[Gap]:
    """The gaps of the contract (section 5) from the uncovered stretches between
    the first start and the last end of the active windows: clipped to the
    configured range, split at local midnights, each given its kind. Time before
    the first or after the last window is new work, never passed here."""
    gaps: list[Gap] = []
    low, stop = settings.start, settings.stop
    for start, end in holes:
        start, end = max(start, low), min(end, stop)
        for day, piece_start, piece_end, day_start, day_end in split_at_midnights(start, end, settings.tz):
            gaps.append(
                Gap(piece_start, piece_end, gap_kind(piece_start, piece_end, day_start, day_end), day)
            )
    return gaps


def gap_kind(start: datetime, end: datetime, day_start: datetime, day_end: datetime) -> str:
    if start == day_start and end == day_end:
        return "missing_day"
    if start == day_start:
        return "start_of_day"
    if end == day_end:
        return "end_of_day"
    return "between_windows"


def floor_to_grid(instant: datetime, day_start: datetime, day_end: datetime, step: Step) -> datetime:
    """The last boundary of the day's grid at or before `instant`."""
    if instant >= day_end:
        return day_end
    if isinstance(step, DayStep) or step >= day_end - day_start:
        return day_start
    return day_start + ((instant - day_start) // step) * step
