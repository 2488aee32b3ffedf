"""`pipestate report --html FILE`: one self-contained HTML page about a pipeline.

Everything is inlined (styles, the few lines of script, the pictures as SVG or
drawn on a canvas from a compact string), so the file opens offline and can be
attached to an incident. It is built from aggregates (one cell per local day,
one per local hour), so a million windows make a file of a few MB. The page is
rendered by a Jinja2 template with autoescaping: error texts and ids from the
state table cannot inject markup.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from ..ops.observe import DAY_STATES, Calendar, Day
from ..statuses import EXHAUSTED, Status
from ..windows import iso
from .text import local_text

if TYPE_CHECKING:
    from ..manager import PipelineStateManager

__all__ = ["HEX", "build_report", "render_report", "write_report"]

# The calendar's colours as the page draws them; one letter per state in the heatmap data.
HEX = {
    "completed": "#2e9e44",
    "in_progress": "#2f6fd6",
    "pending": "#a4acb6",
    "failed": "#d6312f",
    "gap": "#e8b400",
    "outside": "#eef0f2",
}
LETTER = {"completed": "c", "in_progress": "r", "pending": "p", "failed": "f", "gap": "g", "outside": "o"}
_LIST_LIMIT = 200
_CHART_POINTS = 240
_CELL = 11  # px of a calendar day cell
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass
class Report:
    """Everything the page shows, already aggregated."""

    calendar: Calendar
    counts: dict[str, int]
    validation: Any  # PopulateReport of validate()
    populate: dict[str, Any] | None
    failures: list[dict[str, Any]]
    failures_total: int
    leases: dict[str, list[dict[str, Any]]]
    generated: datetime


def build_report(manager: PipelineStateManager) -> Report:
    """Read what the page shows: per-day and per-hour aggregates, the latest
    populate's decisions, failures, leases, and a validate (gaps, overlaps,
    invalid rows)."""
    data = manager.report_data()
    validation = manager.validate()
    return Report(
        data.calendar,
        data.counts,
        validation,
        data.populate,
        data.failures,
        data.failures_total,
        data.leases,
        data.calendar.now,
    )


def _hour_state(day: Day, hour: int, carried: str | None) -> str:
    counts = (day.hours or {}).get(hour)
    if not counts:
        return carried if carried is not None else "gap"
    if counts.get(EXHAUSTED):
        return "failed"
    active = {k: v for k, v in counts.items() if k not in (Status.SUPERSEDED, EXHAUSTED) and v}
    if not active:
        return carried if carried is not None else "gap"
    if set(active) == {Status.COMPLETED}:
        return "completed"
    if set(active) == {Status.PENDING}:
        return "pending"
    return "in_progress"


def heatmap_rows(cal: Calendar) -> tuple[list[str], int]:
    """One string per day that has hours (the latest `HOURS_FOR_DAYS`), one
    letter per hour of the local day (`LETTER`), and the most hours any day
    has. An hour in which no window starts takes the state of the hour before
    (a window of several hours covers it) unless the day has a gap; hours
    outside the range or past the day's end are `o`."""
    rows = []
    longest = 24
    for day in _with_hours(cal):
        hours = int((day.end - day.start).total_seconds() // 3600) + (
            1 if (day.end - day.start).total_seconds() % 3600 else 0
        )
        longest = max(longest, hours)
        letters = []
        carried: str | None = None
        for hour in range(hours):
            begin = day.start + timedelta(hours=hour)
            if begin >= cal.end or begin + timedelta(hours=1) <= cal.start:
                letters.append("o")
                continue
            state = _hour_state(day, hour, None if day.gap else carried)
            if hour in day.overlap_hours:
                state = "gap"
            letters.append(LETTER[state])
            carried = state
        rows.append("".join(letters))
    return rows, longest


def _with_hours(cal: Calendar) -> list[Day]:
    return [day for day in cal.days if day.hours is not None]


def _calendar_svg(cal: Calendar) -> Markup:
    """Per year, a block of weeks (columns) by weekdays (rows, Monday first), with a
    tooltip per day. A range within one year shows only its weeks, in larger cells."""
    if not cal.days:
        return Markup("<p>No local days in the range yet.</p>")
    by_year: dict[int, list[Day]] = {}
    for day in cal.days:
        by_year.setdefault(day.date.year, []).append(day)
    one_year = len(by_year) == 1
    cell = 16 if one_year else _CELL
    step = cell + 2

    def week_of(day: Day) -> int:  # weeks since the Monday on or before 1 January
        jan1 = day.date.replace(month=1, day=1)
        return ((day.date - jan1).days + jan1.weekday()) // 7

    first_week = week_of(cal.days[0]) if one_year else 0
    weeks = (week_of(cal.days[-1]) - first_week + 1) if one_year else 54
    width = 40 + weeks * step
    height = len(by_year) * (7 * step + 8) + 16
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="calendar" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="coverage calendar">'
    ]
    column_month: dict[int, int] = {}  # one year: the month of each week's first day in range
    if not one_year:
        for month, name in enumerate(_MONTHS):
            parts.append(f'<text x="{40 + int(month * 4.42 * step)}" y="10" class="axis">{name}</text>')
    for row, (year, days) in enumerate(by_year.items()):
        top = 16 + row * (7 * step + 8)
        parts.append(f'<text x="0" y="{top + 3 * step + cell - 3}" class="axis">{year}</text>')
        for day in days:
            column = week_of(day) - first_week
            x, y = 40 + column * step, top + day.date.weekday() * step
            if one_year and column not in column_month:
                column_month[column] = day.date.month
                if column_month.get(column - 1) != day.date.month:  # a month's first week: its name
                    parts.append(f'<text x="{x}" y="10" class="axis">{_MONTHS[day.date.month - 1]}</text>')
            tip = (
                f"{day.date} {day.state.replace('_', ' ')}: {day.active} windows"
                + "".join(f", {n} {s}" for s, n in sorted(day.counts.items()) if n)
                + (f", {day.overlaps} overlapping" if day.overlaps else "")
                + (", not fully covered" if day.gap else "")
            )
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" rx="2" class="s-{day.state}" '
                f'data-date="{day.date}"><title>{html.escape(tip)}</title></rect>'
            )
            if one_year:
                parts.append(f'<text x="{x + cell / 2}" y="{y + cell - 4}" class="num">{day.date.day}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _line_chart(title: str, unit: str, labels: list[str], series: dict[str, list[float | None]]) -> Markup:
    """A small SVG line chart; None values break the line. The legend sits above the plot,
    the axis labels outside it, numbers with thousands separators (never 3.2e+05)."""
    width, height, left, bottom, top = 900, 196, 72, 22, 26
    values = [v for line in series.values() for v in line if v is not None]
    if not values or not labels:
        return Markup(f"<p class='muted'>{html.escape(title)}: nothing measured yet.</p>")
    top_value = max(values) or 1.0
    colours = ["#2f6fd6", "#2e9e44", "#c2571a"]
    n = len(labels)

    def x(i: int) -> float:
        return left + (width - left - 10) * (i / max(n - 1, 1))

    def y(v: float) -> float:
        return top + (height - bottom - top) * (1 - v / top_value)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left - 6}" y="{top + 4}" class="axis" text-anchor="end">{_number(top_value)}</text>',
        f'<text x="{left - 6}" y="{top + 16}" class="axis" text-anchor="end">{html.escape(unit)}</text>',
        f'<line x1="{left}" y1="{top}" x2="{width - 10}" y2="{top}" class="grid"/>',
        f'<text x="{left - 6}" y="{height - bottom}" class="axis" text-anchor="end">0</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" class="grid"/>',
        f'<text x="{left}" y="{height - 6}" class="axis">{html.escape(labels[0])}</text>',
        f'<text x="{width - 10}" y="{height - 6}" class="axis" text-anchor="end">'
        f"{html.escape(labels[-1])}</text>",
    ]
    for line, colour in zip(series.values(), colours, strict=False):
        segments: list[list[str]] = [[]]
        for i, v in enumerate(line):
            if v is None:
                segments.append([])
            else:
                segments[-1].append(f"{x(i):.1f},{y(v):.1f}")
        for points in segments:
            if len(points) == 1:
                cx, cy = points[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"/>')
            elif points:
                joined = " ".join(points)
                parts.append(f'<polyline class="line" stroke="{colour}" points="{joined}"/>')
    legend_x = left  # above the plot: no line runs under it
    for (name, _), colour in zip(series.items(), colours, strict=False):
        parts.append(f'<rect x="{legend_x}" y="5" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{legend_x + 14}" y="14" class="axis">{html.escape(name)}</text>')
        legend_x += 14 + 8 * len(name) + 16
    parts.append("</svg>")
    return Markup("".join(parts))


def _number(value: float) -> str:
    """`316,000` or `2.5`: thousands separators, no scientific notation."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}".rstrip("0").rstrip(".") if value else "0"


def _points(days: list[Day]) -> tuple[list[list[Day]], str]:
    """`days` in at most `_CHART_POINTS` consecutive groups, and what one group is."""
    size = max(1, -(-len(days) // _CHART_POINTS))
    groups = [days[first : first + size] for first in range(0, len(days), size)]
    return groups, "day" if size == 1 else f"{size} days"


def _throughput(cal: Calendar) -> tuple[Markup, Markup]:
    """Step durations (mean seconds per completed window, over the days with hours)
    and records per second of processing (over all days)."""
    groups, per = _points(_with_hours(cal))
    steps: dict[str, list[float | None]] = {"extract": [], "stage": [], "load": []}
    for group in groups:
        done = sum(day.counts.get(Status.COMPLETED, 0) for day in group)
        for index, name in enumerate(steps):
            total = sum(day.step_seconds[index] for day in group)
            steps[name].append(total / done if done and total else None)
    step_chart = _line_chart(
        f"step durations, mean per completed window, per {per}",
        "s",
        [str(group[0].date) for group in groups],
        steps,
    )
    groups, per = _points(cal.days)
    rates: dict[str, list[float | None]] = {"records/s": []}
    for group in groups:
        seconds = sum(day.processing_seconds for day in group)
        records = sum(day.records for day in group)
        rates["records/s"].append(records / seconds if seconds else None)
    rate_chart = _line_chart(
        f"records per second of processing, per {per}", "rec/s", [str(g[0].date) for g in groups], rates
    )
    return step_chart, rate_chart


def render_report(report: Report) -> str:
    """The page's HTML text."""
    cal = report.calendar
    env = Environment(
        loader=PackageLoader("pipestate.show", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    zone = report.validation.plan.settings.tz
    rows, longest = heatmap_rows(cal)
    steps_chart, rate_chart = _throughput(cal)
    plan = report.validation.plan
    day_totals = cal.totals()
    problem_days = [day for day in cal.days if day.state in ("failed", "gap")][:_LIST_LIMIT]
    template = env.get_template("report.html.j2")
    return template.render(
        cal=cal,
        zone=zone,
        local=lambda instant: local_text(instant, zone),
        iso=iso,
        counts=report.counts,
        total_windows=sum(report.counts.values()),
        day_totals=day_totals,
        day_states=DAY_STATES,
        hex=HEX,
        calendar_svg=_calendar_svg(cal),
        heat={
            "first": str(_with_hours(cal)[0].date) if _with_hours(cal) else "",
            "all_days": len(cal.days),
            "hours": longest,
            "rows": rows,
            "colours": {LETTER[state]: HEX[state] for state in LETTER},
            "names": {LETTER[state]: state for state in LETTER},
        },
        steps_chart=steps_chart,
        rate_chart=rate_chart,
        gaps=plan.gaps[:_LIST_LIMIT],
        gaps_total=len(plan.gaps),
        overlaps=plan.resolutions[:_LIST_LIMIT],
        overlaps_total=len(plan.resolutions),
        invalid=plan.invalid[:_LIST_LIMIT],
        invalid_total=len(plan.invalid),
        problem_days=problem_days,
        populate=report.populate,
        failures=report.failures,
        failures_total=report.failures_total,
        leases=report.leases,
        generated=report.generated,
        limit=_LIST_LIMIT,
        problems=Counter(day.state for day in problem_days),
    )


def write_report(manager: PipelineStateManager, path: Path) -> dict[str, Any]:
    """Build the report and write it to `path` (through a temporary file, so a
    reader never sees half a page); returns what was written."""
    text = render_report(build_report(manager))
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
    return {"pipeline": manager.pipeline, "html": str(path), "bytes": len(text.encode("utf-8"))}
