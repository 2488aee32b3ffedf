"""What the observing commands print: the coverage calendar of `pipestate status`
and the window table of `pipestate windows`.

The calendar has one cell per local day, coloured by the day's state on a
terminal, one symbol per state in plain text (not a terminal, or NO_COLOR set).
Up to ten weeks show as weeks (rows, Monday first); longer ranges as one row of
up to 31 days per month, with runs of months in one state folded into a line.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from typing import IO, Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.text import Text

from ..ops.observe import DAY_STATES, Calendar, Day
from ..windows import read_instant
from .text import local_text, printable

__all__ = ["COLOURS", "SYMBOLS", "render_calendar", "render_windows"]

SYMBOLS = {
    "completed": "#",
    "in_progress": "+",
    "pending": ".",
    "failed": "X",
    "gap": "!",
    "outside": " ",
}
# rich styles: a coloured background with the day's number on it (weeks), or a block (months)
COLOURS = {
    "completed": "green",
    "in_progress": "blue",
    "pending": "grey50",
    "failed": "red",
    "gap": "yellow",
    "outside": "grey23",
}
_WEEKS_UP_TO = 70  # days; longer ranges show months as rows
_FOLD_MONTHS = 3  # at least this many months in a row in one state fold into one line


class _Cells:
    """Cells in colour (a coloured background) or plain (a symbol per state)."""

    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def number(self, day: Day | None, day_date: date) -> Text:
        """The day's number, on its colour or followed by its symbol (3 characters)."""
        state = "outside" if day is None else day.state
        if not self.colour:
            return Text(f"{day_date.day:>2}{SYMBOLS[state]}" if day else "   ")
        if day is None:
            return Text("   ")
        return Text(f"{day_date.day:>2} ", style=f"bold white on {COLOURS[state]}")

    def block(self, state: str, width: int = 1) -> Text:
        """`width` characters in the state's colour, or its symbol repeated."""
        if self.colour:
            return Text(" " * width, style=f"on {COLOURS[state]}")
        return Text(SYMBOLS[state] * width)


def render_calendar(calendar: Calendar, stream: IO[str] | None = None, colour: bool | None = None) -> None:
    """Print the calendar, its legend and the day totals on `stream` (stdout).

    `colour` None decides as rich does: colours on a terminal unless NO_COLOR
    is set (or TERM=dumb); otherwise plain symbols.
    """
    console = Console(file=stream, highlight=False, soft_wrap=True, emoji=False)
    if colour is None:
        colour = console.is_terminal and not console.no_color and console.color_system is not None
    if not colour:
        console = Console(file=stream, highlight=False, soft_wrap=True, emoji=False, no_color=True)
    cells = _Cells(colour)
    days = calendar.days
    where = f"local days in {calendar.timezone}"
    if not days:
        console.print(f"  calendar   no local days in the range yet ({where})")
        return
    console.print(f"  calendar   {days[0].date} .. {days[-1].date}, {where}")
    lines = _weeks(days, cells) if len(days) <= _WEEKS_UP_TO else _months(days, cells)
    for line in lines:
        console.print(line)
    legend = Text("  legend     ")
    totals = calendar.totals()
    for state in DAY_STATES:
        if state == "outside":
            continue
        legend.append_text(cells.block(state, 2 if colour else 1))
        legend.append(f" {state.replace('_', ' ')} {totals[state]:,}   ")
    legend.rstrip()
    console.print(legend)


def _weeks(days: list[Day], cells: _Cells) -> Iterator[Text]:
    by_date = {day.date: day for day in days}
    header = Text(" " * 14 + "  ".join(("Mo", "Tu", "We", "Th", "Fr", "Sa", "Su")))
    yield header
    week = days[0].date - timedelta(days=days[0].date.weekday())
    while week <= days[-1].date:
        line = Text(f"  {week.isoformat()}  ")
        for offset in range(7):
            day_date = week + timedelta(days=offset)
            if offset:
                line.append(" ")
            line.append_text(cells.number(by_date.get(day_date), day_date))
        line.rstrip()
        yield line
        week += timedelta(days=7)


def _months(days: list[Day], cells: _Cells) -> Iterator[Text]:
    months: dict[tuple[int, int], list[Day]] = {}
    for day in days:
        months.setdefault((day.date.year, day.date.month), []).append(day)
    header = Text("           " + "".join(f"{number:<5}" for number in range(1, 32, 5)))
    header.rstrip()
    header_shown = False
    keys = list(months)
    states = [{day.state for day in months[key]} for key in keys]
    index = 0
    while index < len(keys):
        run = index
        while len(states[index]) == 1 and run + 1 < len(keys) and states[run + 1] == states[index]:
            run += 1
        if run - index + 1 >= _FOLD_MONTHS:
            (state,) = states[index]
            count = sum(len(months[keys[k]]) for k in range(index, run + 1))
            (y0, m0), (y1, m1) = keys[index], keys[run]
            line = Text(f"  {y0}-{m0:02d} .. {y1}-{m1:02d}  ")
            line.append_text(cells.block(state, 3))
            line.append(f" all {state.replace('_', ' ')} ({run - index + 1} months, {count:,} days)")
            yield line
            index = run + 1
            continue
        if not header_shown:
            yield header
            header_shown = True
        year, month = keys[index]
        line = Text(f"  {year}-{month:02d}  ")
        by_number = {day.date.day: day for day in months[keys[index]]}
        for number in range(1, 32):
            found = by_number.get(number)
            line.append_text(cells.block(found.state) if found else Text(" "))
        line.rstrip()
        yield line
        index += 1


def _duration(minutes: Any) -> str:
    if minutes is None:
        return "-"
    hours, rest = divmod(int(minutes), 60)
    return f"{hours}h{rest:02d}" if hours else f"{rest}m"


def render_windows(data: dict[str, Any], tz: ZoneInfo) -> str:
    """`pipestate windows` as text within 100 columns: a header, then per window a line
    (local start and end, UTC start, length, status, step, retries, worker) and its batch
    id below it, then the last error or supersession."""
    low, high = read_instant(data["start"]), read_instant(data["end"])
    shown, total = data["shown"], data["total"]
    which = f" {'/'.join(data['statuses'])}" if data["statuses"] else ""
    lines = [
        f"pipeline {data['pipeline']}: {total}{which} window(s) starting "
        f"{local_text(low, tz)} .. {local_text(high, tz)}",
        f"  {data['timezone']}; UTC {_utc_short(low)} .. {_utc_short(high)}",
    ]
    if not data["windows"]:
        return "\n".join(lines)
    rows = []
    for window in data["windows"]:
        start, end = read_instant(window["start"]), read_instant(window["end"])
        local_start, local_end = local_text(start, tz), local_text(end, tz)
        if local_end[:10] == local_start[:10]:
            local_end = local_end[11:]  # same date: the time and zone suffice
        elif start is not None and end is not None and _ends_at_midnight(start, end, tz):
            local_end = "24:00" + local_end[16:]  # the day's end, as a timetable writes it
        rows.append((window, start, local_start, local_end))
    end_width = max(len("end"), *(len(row[3]) for row in rows))
    lines.append(
        f"  {'local start':<20} {'end':<{end_width}} {'UTC start':<11} {'length':>6}  {'status':<12} "
        f"{'step':<6} {'tries':>5}  worker"
    )
    for window, start, local_start, local_end in rows:
        utc = start.strftime("%m-%d %H:%M") if start else "-"
        status = str(window["status"] or "-") + ("!" if window["lease_expired"] else "")
        length = _duration(window["duration_minutes"])
        lines.append(
            f"  {local_start:<20} {local_end:<{end_width}} {utc:<11} {length:>6}  "
            f"{status:<12} {window['step'] or '-':<6} {window['retry_count']:>5}  "
            f"{_cut(printable(window['worker_id'] or '-'), 20)}"
        )
        lines.append(f"      {printable(window['batch_id'])}")
        if window["last_error"]:
            step = f" in {window['last_error_step']}" if window["last_error_step"] else ""
            error = printable((str(window["last_error"]).splitlines() or [""])[0])
            lines.append(_cut(f"      last error{step}: {error}", 100))
        if window["superseded_by"]:
            reason = printable(window["supersede_reason"] or "")
            lines.append(_cut(f"      superseded by {printable(window['superseded_by'])}: {reason}", 100))
    if shown < total:
        lines.append(f"  ... and {total - shown} more (raise --limit, or narrow with --status)")
    if any(window["lease_expired"] for window in data["windows"]):
        lines.append("  ! IN_PROGRESS under an expired lease (stuck: the next claim takes it over)")
    return "\n".join(lines)


def _ends_at_midnight(start: Any, end: Any, tz: ZoneInfo) -> bool:
    first, last = start.astimezone(tz), end.astimezone(tz)
    return (last.date() - first.date()).days == 1 and (last.hour, last.minute) == (0, 0)


def _utc_short(instant: Any) -> str:
    return "-" if instant is None else instant.strftime("%Y-%m-%d %H:%M")


def _cut(text: str, width: int) -> str:
    """`text` within `width` columns, an ellipsis marking the cut (--json has it whole)."""
    return text if len(text) <= width else text[: width - 3] + "..."
