"""Every command's output: what populate and validate found and did (contract section 5),
and the JSON and plain text of status, claims, requeue, history, run and demo."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from .planning import Fill, Plan, dominant, fill_cells, seconds_to_minutes
from .plugins import default_batch_id
from .windows import format_step, iso, read_instant

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from .batches import Batch
    from .demo import DemoResult
    from .runner import RunResult
    from .worker import RunSummary

__all__ = [
    "CreatedLog",
    "PopulateReport",
    "claim_text",
    "demo_text",
    "fail_text",
    "history_text",
    "iso",
    "local_text",
    "requeue_text",
    "run_json",
    "run_text",
    "span_with_local",
    "status_text",
    "with_local",
]


def local_text(instant: datetime | None, tz: ZoneInfo, seconds: bool = False) -> str:
    """`2026-03-08 03:00 EDT`: the wall clock of `tz`, with the zone's abbreviation
    (which tells the two 01:30s of a DST fall-back apart)."""
    if instant is None:
        return "-"
    local = instant.astimezone(tz)
    return local.strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z")


def _is_utc(tz: ZoneInfo | None) -> bool:
    return tz is None or tz.key in ("UTC", "Etc/UTC", "Etc/Universal", "Universal", "Zulu", "Etc/Zulu")


def with_local(text: Any, tz: ZoneInfo | None, inside: bool = False) -> str:
    """An instant's UTC ISO text followed by its local time in `tz`, for the
    plain-text outputs: `2026-03-08T06:00:00+00:00 (2026-03-08 01:00 EST)`, or
    `..., local 2026-03-08 01:00 EST` when `inside` parentheses already. The UTC
    text alone when the zone is UTC or the value is not an instant."""
    if _is_utc(tz) or not isinstance(text, str | datetime):
        return str(text)
    instant = read_instant(text) if isinstance(text, str) else text
    if instant is None or tz is None:
        return str(text)
    shown = iso(instant) if isinstance(text, datetime) else text
    return f"{shown}, local {local_text(instant, tz)}" if inside else f"{shown} ({local_text(instant, tz)})"


def span_with_local(start: Any, end: Any, tz: ZoneInfo | None) -> str:
    """`A .. B (local A' .. B')` for two instants, or `A .. B` in UTC zones."""
    first = iso(start) if isinstance(start, datetime) else start
    last = iso(end) if isinstance(end, datetime) else end
    plain = f"{first} .. {last}"
    if _is_utc(tz) or tz is None:
        return plain
    low = read_instant(first) if isinstance(first, str) else None
    high = read_instant(last) if isinstance(last, str) else None
    if low is None and high is None:
        return plain
    return f"{plain} (local {local_text(low, tz)} .. {local_text(high, tz)})"


def _distribution(counter: Any) -> dict[str, int]:
    return {str(seconds_to_minutes(seconds)): count for seconds, count in sorted(counter.items())}


class CreatedLog:
    """The windows a populate created, kept as the plan's fills (a few per day):
    a million windows cost nothing per window. They are recomputed, in the same
    order, when read. Ids that differ from the default `<pipeline>-<start>-<end>`
    (custom id functions, `-rN` suffixes) are kept by position.
    """

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self._fills: list[Fill] = []
        self._count = 0
        self._ids: dict[int, str] = {}

    def record(self, fills: list[Fill], count: int) -> None:
        """The run created the `count` windows of `fills`, in order."""
        self._fills, self._count = fills, count

    def set_id(self, index: int, batch_id: str) -> None:
        """The `index`-th window (from 0) got `batch_id`, not the default id."""
        self._ids[index] = batch_id

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        ids = self._ids
        for index, (_, _, start, end, _, origin) in enumerate(fill_cells(self._fills)):
            if index >= self._count:
                return
            yield {
                "batch_id": ids.get(index) or default_batch_id(self.pipeline, start, end),
                "start": iso(start),
                "end": iso(end),
                "duration_minutes": seconds_to_minutes(int((end - start).total_seconds())),
                "record_origin": origin,
            }


@dataclass
class PopulateReport:
    """The result of populate_pipeline_batches (and of validate, with nothing done)."""

    pipeline: str
    dry_run: bool
    run_id: str
    now: datetime
    plan: Plan
    created: CreatedLog
    superseded: list[dict[str, Any]] = field(default_factory=list)
    table_missing: bool = False
    # New windows whose default id another row already held: {"wanted", "used"}.
    id_collisions: list[dict[str, str]] = field(default_factory=list)

    # -- the contract's JSON shape --------------------------------------------

    def header(self) -> dict[str, Any]:
        plan = self.plan
        settings = plan.settings
        analysis = plan.analysis
        dominant_seconds = analysis.dominant_seconds
        by_day = []
        for day in sorted(analysis.by_day):
            counter = analysis.by_day[day]
            day_dominant = dominant(counter)
            by_day.append(
                {
                    "date": day.isoformat(),
                    "windows": sum(counter.values()),
                    "dominant_duration_minutes": seconds_to_minutes(day_dominant) if day_dominant else None,
                    "duration_distribution": _distribution(counter),
                }
            )
        return {
            "pipeline": self.pipeline,
            "dry_run": self.dry_run,
            "run_id": self.run_id,
            "now": iso(self.now),
            "range": {"start": iso(settings.start), "end": iso(settings.stop)},
            "analysis": {
                "active_windows": analysis.active_windows,
                "first_start": iso(analysis.first_start),
                "last_end": iso(analysis.last_end),
                "dominant_duration_minutes": (
                    seconds_to_minutes(dominant_seconds) if dominant_seconds is not None else None
                ),
                "duration_distribution": _distribution(analysis.distribution),
                "by_day": by_day,
            },
            "gaps": [
                {
                    "start": iso(gap.start),
                    "end": iso(gap.end),
                    "kind": gap.kind,
                    "local_date": gap.local_date.isoformat(),
                    "duration_minutes": seconds_to_minutes(int((gap.end - gap.start).total_seconds())),
                }
                for gap in plan.gaps
            ],
            "overlaps": [
                {
                    "kept": resolution.kept.batch_id,
                    "superseded": resolution.superseded.batch_id,
                    "reason": resolution.reason,
                }
                for resolution in plan.resolutions
            ],
            "superseded": self.superseded,
            "id_collisions": self.id_collisions,
            "invalid_rows": [
                {"batch_id": row.batch_id, "reason": row.reason, "treated_as_active": row.active}
                for row in plan.invalid
            ],
            "fills": [
                {
                    "local_date": fill.local_date.isoformat(),
                    "start": iso(fill.start),
                    "end": iso(fill.end),
                    "step": format_step(fill.step),
                    "record_origin": fill.origin,
                }
                for fill in plan.fills
            ][:1000],
            "summary": self.summary(),
        }

    def summary(self) -> dict[str, int]:
        return {
            "active_windows": self.plan.analysis.active_windows,
            "gaps": len(self.plan.gaps),
            "overlaps": len(self.plan.resolutions),
            "invalid_rows": len(self.plan.invalid),
            "created": len(self.created),
            "superseded": len(self.superseded),
        }

    def problems(self, require_coverage: bool = False) -> list[str]:
        """What makes `validate` exit 1: no table, gaps, overlaps, invalid rows; with
        `require_coverage`, also time in the range that no window covers yet."""
        plan = self.plan
        found = []
        if self.table_missing:
            found.append("the state table does not exist")
        for count, what in (
            (len(plan.gaps), "gap(s)"),
            (len(plan.resolutions), "overlap(s)"),
            (len(plan.invalid), "invalid row(s)"),
        ):
            if count:
                found.append(f"{count} {what}")
        if require_coverage and plan.fills and not self.table_missing:
            minutes = sum((fill.end - fill.start).total_seconds() for fill in plan.fills) / 60
            found.append(f"{minutes:g} min of the range not covered by any window (run populate)")
        return found

    @property
    def found_problems(self) -> bool:
        """Whether validate exits 1: a gap, an overlap, an invalid row, or no table."""
        return bool(self.problems())

    def validate_dict(self, require_coverage: bool = False) -> dict[str, Any]:
        """`validate --json`: the header without the fills, `ok`, `problems`, `table_exists`."""
        data = self.header()
        data.pop("fills", None)
        problems = self.problems(require_coverage)
        data["table_exists"] = not self.table_missing
        data["ok"] = not problems
        data["problems"] = problems
        return data

    def to_dict(self) -> dict[str, Any]:
        """The whole report as one dict (fine for anything but huge first runs)."""
        return {**self.header(), "created": list(self.created)}

    def write_json(self, stream: IO[str]) -> None:
        """Write the JSON object, streaming `created` entry by entry."""
        body = json.dumps(self.header(), indent=None)
        stream.write(body[:-1])
        stream.write(', "created": [')
        for index, entry in enumerate(self.created):
            if index:
                stream.write(", ")
            stream.write(json.dumps(entry))
        stream.write("]}\n")

    # -- plain text -------------------------------------------------------------

    def render(self, verb: str = "populate", limit: int = 20) -> str:
        """Plain text; instants in UTC, each followed by its local time in the
        pipeline's zone (unless that is UTC)."""
        plan = self.plan
        analysis = plan.analysis
        header = self.header()
        tz = plan.settings.tz
        lines = [
            f"pipeline {self.pipeline}: {verb}{' (dry run: nothing written)' if self.dry_run else ''}",
            f"  range       {span_with_local(header['range']['start'], header['range']['end'], tz)}",
        ]
        if analysis.active_windows:
            dominant_minutes = header["analysis"]["dominant_duration_minutes"]
            lines.append(
                f"  found       {analysis.active_windows} active window(s) from "
                f"{with_local(analysis.first_start, tz)} to {with_local(analysis.last_end, tz)}, "
                f"mostly {dominant_minutes} min"
            )
        elif self.table_missing:
            lines.append("  found       no state table yet")
        else:
            lines.append("  found       no active windows")
        sections = [
            ("gaps", [f"{g.kind:<16} {span_with_local(g.start, g.end, tz)}" for g in plan.gaps]),
            (
                "overlaps",
                [
                    f"kept {r.kept.batch_id}, superseded {r.superseded.batch_id}: {r.reason}"
                    for r in plan.resolutions
                ],
            ),
            ("invalid rows", [f"{row.batch_id}: {row.reason}" for row in plan.invalid]),
        ]
        if self.id_collisions:
            sections.append(
                (
                    "id collisions",
                    [
                        f"{c['wanted']} is held by another row; the new window gets {c['used']}"
                        for c in self.id_collisions
                    ],
                )
            )
        for title, items in sections:
            lines.append(f"  {title:<11} {len(items)}")
            lines += [f"    {item}" for item in items[:limit]]
            if len(items) > limit:
                lines.append(f"    ... and {len(items) - limit} more (use --json for all)")
        if verb == "populate":
            origins: dict[str, int] = {}
            for fill in plan.fills:
                origins[fill.origin] = origins.get(fill.origin, 0) + 1
            done = "would create" if self.dry_run else "created"
            lines.append(f"  {done:<11} {len(self.created)} window(s)")
            for fill in plan.fills[:limit]:
                lines.append(
                    f"    {fill.origin:<9} {fill.local_date} {span_with_local(fill.start, fill.end, tz)} "
                    f"on the {format_step(fill.step)} grid"
                )
            if len(plan.fills) > limit:
                lines.append(f"    ... and {len(plan.fills) - limit} more stretches")
            did = "would supersede" if self.dry_run else "superseded"
            lines.append(f"  {did:<11} {len(plan.resolutions)} window(s)")
        return "\n".join(lines)


# -- the other commands ------------------------------------------------------------


# A FAILED row another tool wrote may carry no error text; say so rather than print None.
_NO_ERROR = "(no error recorded)"


def status_text(data: dict[str, Any], tz: ZoneInfo | None = None) -> str:
    """`status` in plain text, from the dict `PipelineStateManager.status()` returns;
    with `tz` (the pipeline's zone), each instant also in local time."""
    coverage = data["coverage"]
    covered, whole = coverage["covered_minutes"], coverage["range_minutes"]
    lines = [
        f"pipeline {data['pipeline']}  (now {with_local(data['now'], tz, inside=True)})",
        f"  range      {span_with_local(data['range']['start'], data['range']['end'], tz)}",
        f"  coverage   {coverage['percent']}% ({covered} of {whole} min)",
        f"  windows    {span_with_local(data['first_window_start'], data['last_window_end'], tz)}",
        "  counts     " + ", ".join(f"{k} {v}" for k, v in data["counts"].items()),
    ]
    pending = data["oldest_pending"]
    if pending:
        start = with_local(pending["start"], tz, inside=True)
        lines.append(f"  oldest pending  {pending['batch_id']} (window start {start})")
    if data["failures"]:
        lines.append(f"  failures   {len(data['failures'])}")
        for failure in data["failures"][:10]:
            error = failure["last_error"] or _NO_ERROR
            lines.append(f"    {failure['batch_id']} retries {failure['retry_count']}: {error}")
    for entry in data.get("in_flight", [])[:20]:
        lines.append(
            f"  in flight  {entry['batch_id']} by {entry['worker_id']} for {entry['lease_age_seconds']}s, "
            f"lease until {with_local(entry['lease_expires_at'], tz)}"
        )
    for entry in data.get("expired_leases", [])[:20]:
        lines.append(
            f"  STUCK      {entry['batch_id']} by {entry['worker_id']}: "
            f"lease expired {with_local(entry['lease_expires_at'], tz)}"
        )
    for entry in data.get("failed_permanently", [])[:20]:
        error = entry["last_error"] or _NO_ERROR
        lines.append(f"  FAILED for good  {entry['batch_id']} ({entry['retry_count']} attempts): {error}")
    return "\n".join(lines)


def claim_text(batch: Batch | None) -> str:
    if batch is None:
        return "nothing to claim"
    shown = batch.to_dict()
    return (
        f"claimed {batch.batch_id} [{shown['start']} .. {shown['end']}) "
        f"lease until {shown['lease_expires_at']} token {batch.claim_token}"
    )


def fail_text(batch_id: str, outcome: dict[str, Any]) -> str:
    if outcome["permanent"]:
        return f"{batch_id}: FAILED for good after {outcome['retry_count']} attempt(s); requeue to retry"
    return f"{batch_id}: FAILED, retry {outcome['retry_count']} from {outcome['next_attempt_at']}"


def requeue_text(done: list[str], limit: int = 50) -> str:
    return "\n".join([f"requeued {len(done)} batch(es)", *(f"  {batch_id}" for batch_id in done[:limit])])


def history_text(batch_id: str, events: list[dict[str, Any]], tz: ZoneInfo | None = None) -> str:
    """The audit trail, one line per event; with `tz`, each time also in local time."""
    if not events:
        return f"no events for {batch_id}"
    lines = []
    for event in events:
        change = f"{event['old_status'] or '-'} -> {event['new_status'] or '-'}"
        when = event["event_time"]
        if tz is not None and not _is_utc(tz):
            instant = read_instant(when) if isinstance(when, str) else None
            when = f"{when} ({local_text(instant, tz, seconds=True)})" if instant else when
        lines.append(
            f"{when}  {event['event_type']:<13} {change:<26} "
            f"{event['worker_id'] or ''}  {event['details'] or ''}"
        )
    return "\n".join(lines)


def run_json(result: RunResult, counts: dict[str, int]) -> dict[str, Any]:
    """`run --json`: what populate and the workers did, and the status counts after."""
    return {
        "created": result.created,
        "superseded": result.superseded,
        "completed": result.summary.completed,
        "failed": result.summary.failed,
        "lost": result.summary.lost,
        "ok": result.summary.ok,
        "failed_batches": sorted(result.summary.failed_ids),
        "lost_batches": sorted(result.summary.lost_ids),
        "seconds": round(result.seconds, 3),
        "counts": counts,
    }


def run_problems(summary: RunSummary) -> str:
    """The last line of a run whose batches did not all succeed (exit 5): which ones, and what next."""
    parts = []
    for ids, what in ((summary.failed_ids, "ended FAILED"), (summary.lost_ids, "lost their lease")):
        if ids:
            shown = ", ".join(sorted(ids)[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            parts.append(f"{len(ids)} batch(es) {what}: {shown}")
    return "; ".join(parts) + " (exit 5; see pipestate status, pipestate history BATCH_ID)"


def run_text(result: RunResult) -> str:
    summary = result.summary
    return (
        f"populate created {result.created} and superseded {result.superseded} window(s); "
        f"processed {summary.processed} batch(es) in {result.seconds:.1f}s: {summary.completed} completed, "
        f"{summary.failed} failed (will retry or need requeue), {summary.lost} lost their lease"
    )


def demo_text(demo: DemoResult) -> str:
    """What `pipestate demo` did and where everything is (after the "generated" line)."""
    setup, config = demo.setup, demo.setup.config_path
    return f"""{run_text(demo.run)}
target: {demo.rows} rows, {demo.distinct} distinct events of {setup.events} generated: {demo.verdict}
state:  {", ".join(f"{k} {v}" for k, v in sorted(demo.counts.items()))}

Everything is in {setup.directory}/:
  pipestate.toml   the config (files source, local stage, DuckDB target, SQLite state)
  source/          the generated NDJSON events
  stage/           one staged Parquet file per window
  target.duckdb    the loaded rows (table events)
  state.db         the state table (pipeline_state) and its audit trail (pipeline_state_events)
Next:
  pipestate status --config {config}
  pipestate history <batch_id> --config {config}
  pipestate validate --config {config}
To use real systems, point [source], [stage] and [target] at Elasticsearch, S3 and
Snowflake (docs/connectors.md) and [state] url at PostgreSQL or Snowflake."""
