"""Results into words: the plain text of every command (populate and validate, status, claims,
requeue, history, run and demo), with instants in UTC followed by the pipeline's local time."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ..windows import format_step, iso, read_instant

if TYPE_CHECKING:
    from ..ops.batch import Batch
    from ..ops.mirror import MirrorResult
    from ..ops.populate_report import PopulateReport
    from ..ops.reconcile import ReconcileReport
    from ..ops.regrid import RegridReport
    from ..run.demo import DemoResult
    from ..run.runner import RunResult
    from ..run.worker import RunSummary

__all__ = [
    "claim_text",
    "demo_text",
    "fail_text",
    "history_text",
    "local_text",
    "populate_text",
    "printable",
    "reconcile_text",
    "regrid_text",
    "requeue_text",
    "run_json",
    "run_problems",
    "run_text",
    "span_with_local",
    "status_text",
    "with_local",
]


def printable(value: Any) -> str:
    """`value` as text safe to print on a terminal: control characters (escape sequences that
    retitle the window or rewrite the screen, NUL, BEL, C1 codes, line breaks) and other
    invisible ones shown escaped (`\\x1b`), as they came from a batch id, a worker id or an
    error another process wrote."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


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


def _local_span(start: Any, end: Any, tz: ZoneInfo | None) -> str:
    """`2026-03-02 00:00 EST .. 2026-03-10 00:00 EDT (UTC 03-02 05:00 .. 03-10 04:00)`."""
    low = read_instant(start) if isinstance(start, str) else start
    high = read_instant(end) if isinstance(end, str) else end
    if low is None or high is None:
        return "-" if low is None and high is None else f"{start or '-'} .. {end or '-'}"
    zone_ = tz if tz is not None else ZoneInfo("UTC")
    text = f"{local_text(low, zone_)} .. {local_text(high, zone_)}"
    if _is_utc(tz):
        return text
    return f"{text} (UTC {low.astimezone(UTC):%m-%d %H:%M} .. {high.astimezone(UTC):%m-%d %H:%M})"


def populate_text(report: PopulateReport, verb: str = "populate", limit: int = 20) -> str:
    """Plain text; instants in UTC, each followed by its local time in the
    pipeline's zone (unless that is UTC)."""
    plan = report.plan
    analysis = plan.analysis
    header = report.header()
    tz = plan.settings.tz
    lines = [
        f"pipeline {report.pipeline}: {verb}{' (dry run: nothing written)' if report.dry_run else ''}",
        f"  range       {span_with_local(header['range']['start'], header['range']['end'], tz)}",
    ]
    if analysis.active_windows:
        dominant_minutes = header["analysis"]["dominant_duration_minutes"]
        lines.append(
            f"  found       {analysis.active_windows} active window(s) from "
            f"{with_local(analysis.first_start, tz)} to {with_local(analysis.last_end, tz)}, "
            f"mostly {dominant_minutes} min"
        )
    elif report.table_missing:
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
    if report.id_collisions:
        sections.append(
            (
                "id collisions",
                [
                    f"{c['wanted']} is held by another row; the new window gets {c['used']}"
                    for c in report.id_collisions
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
        done = "would create" if report.dry_run else "created"
        lines.append(f"  {done:<11} {len(report.created)} window(s)")
        for fill in plan.fills[:limit]:
            lines.append(
                f"    {fill.origin:<9} {fill.local_date} {span_with_local(fill.start, fill.end, tz)} "
                f"on the {format_step(fill.step)} grid"
            )
        if len(plan.fills) > limit:
            lines.append(f"    ... and {len(plan.fills) - limit} more stretches")
        did = "would supersede" if report.dry_run else "superseded"
        lines.append(f"  {did:<11} {len(plan.resolutions)} window(s)")
    return "\n".join(lines)


# -- the other commands ------------------------------------------------------------


# A FAILED row another tool wrote may carry no error text; say so rather than print None.
_NO_ERROR = "(no error recorded)"


def _clock(instant: datetime, tz: ZoneInfo) -> str:
    return instant.astimezone(tz).strftime("%H:%M")


def _grid(spans: list[tuple[datetime, datetime]], tz: ZoneInfo, limit: int = 5) -> str:
    """`6 windows: 00:00-00:30 00:30-01:00 ... 22:30-23:00` in the pipeline's wall clock."""
    shown = " ".join(f"{_clock(s, tz)}-{_clock(e, tz)}" for s, e in spans[:limit])
    more = f" ... (+{len(spans) - limit})" if len(spans) > limit else ""
    return f"{len(spans)} window(s): {shown}{more}" if spans else "none"


def regrid_text(report: RegridReport, tz: ZoneInfo, limit: int = 31) -> str:
    """Before and after per local day (wall-clock times of the pipeline's zone)."""
    plan = report.plan
    verb = "would replace" if report.dry_run else "replaced"
    head = (
        f"regrid {report.pipeline} to {format_step(plan.step)}"
        f"{' (dry run: nothing written)' if report.dry_run else ''}: "
        f"{verb} {len(plan.superseded)} window(s) by {plan.created} on {len(plan.days)} local day(s)"
    )
    lines = [head]
    for day in plan.days[:limit]:
        stays = f"; {day.stays} staying" if day.stays else ""
        lines.append(f"  {day.local_date.isoformat()}{stays}")
        lines.append(f"    before  {_grid([(w.start, w.end) for w in day.before], tz)}")
        lines.append(f"    after   {_grid(day.after, tz)}")
    if len(plan.days) > limit:
        lines.append(f"  ... {len(plan.days) - limit} more day(s) (--json lists them all)")
    for why, count in sorted(plan.stayed.items()):
        lines.append(f"  kept as they are: {count} ({why})")
    if not plan.days:
        lines.append("  nothing to do: the PENDING and FAILED windows of the range are on that grid")
    return "\n".join(lines)


def status_text(data: dict[str, Any], tz: ZoneInfo | None = None) -> str:
    """`status` in plain text within 100 columns, from the dict `PipelineStateManager.status()`
    returns; with `tz` (the pipeline's zone), times read in local time, UTC beside them."""
    coverage = data["coverage"]
    covered, whole = coverage["covered_minutes"], coverage["range_minutes"]
    now = read_instant(data["now"])
    now_text = iso(now.replace(microsecond=0)) if now is not None else str(data["now"])
    lines = [
        f"pipeline {data['pipeline']}  (now {with_local(now_text, tz, inside=True)})",
        f"  range      {_local_span(data['range']['start'], data['range']['end'], tz)}",
        f"  coverage   {coverage['percent']}% ({int(covered):,} of {int(whole):,} min)",
        f"  windows    {_local_span(data['first_window_start'], data['last_window_end'], tz)}",
        "  counts     " + ", ".join(f"{k} {v:,}" for k, v in data["counts"].items()),
    ]
    pending = data["oldest_pending"]
    if pending:
        lines.append(f"  oldest pending  {printable(pending['batch_id'])}")
        lines.append(f"                  window start {_when(pending['start'], tz)}")
    if data["failures"]:
        lines.append(f"  failures   {len(data['failures'])}")
        for failure in data["failures"][:10]:
            error = printable((str(failure["last_error"] or _NO_ERROR).splitlines() or [""])[0])
            lines.append(f"    {printable(failure['batch_id'])} retries {failure['retry_count'] or 0}")
            lines.append(_fit(f"      {error}"))
    for entry in data.get("in_flight", [])[:20]:
        age = entry["lease_age_seconds"]
        lines.append(f"  in flight  {printable(entry['batch_id'])} by {printable(entry['worker_id'] or '-')}")
        held = f"for {int(age):,} s, " if age is not None else ""
        lines.append(f"             {held}lease until {_when(entry['lease_expires_at'], tz)}")
    for entry in data.get("expired_leases", [])[:20]:
        lines.append(f"  STUCK      {printable(entry['batch_id'])} by {printable(entry['worker_id'] or '-')}")
        lines.append(f"             lease expired {_when(entry['lease_expires_at'], tz)}")
    for entry in data.get("failed_permanently", [])[:20]:
        error = printable((str(entry["last_error"] or _NO_ERROR).splitlines() or [""])[0])
        lines.append(
            f"  FAILED for good  {printable(entry['batch_id'])} ({entry['retry_count'] or 0} attempts)"
        )
        lines.append(_fit(f"                   {error}"))
    return "\n".join(_fit(line) for line in lines)


def _when(value: Any, tz: ZoneInfo | None) -> str:
    """An instant for people: local time (to the minute) with UTC beside it."""
    instant = read_instant(value) if isinstance(value, str) else value
    if instant is None:
        return "-"
    if _is_utc(tz) or tz is None:
        return local_text(instant, ZoneInfo("UTC"))
    return f"{local_text(instant, tz)} (UTC {instant.astimezone(UTC):%m-%d %H:%M})"


def _fit(line: str, width: int = 100) -> str:
    """A line within `width` columns; an ellipsis marks the cut (`--json` has it whole)."""
    return line if len(line) <= width else line[: width - 3] + "..."


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
    return "\n".join(
        [f"requeued {len(done)} batch(es)", *(f"  {printable(batch_id)}" for batch_id in done[:limit])]
    )


def reconcile_text(report: ReconcileReport, limit: int = 50) -> str:
    """What `reconcile` checked, then one line per finding (the first `limit`)."""
    checked = (
        f"{report.completed} COMPLETED of {report.windows} window(s), {report.target_rows:,} target row(s)"
    )
    if report.source_checked:
        checked += ", source recounted"
    lines = [f"reconcile {report.pipeline}: {checked} in {report.seconds:.2f}s"]
    if report.ok:
        lines.append("ok: every COMPLETED window's rows are in the target exactly as recorded")
        return "\n".join(lines)
    lines.append(f"{len(report.findings)} finding(s):")
    for finding in report.findings[:limit]:
        lines.append(f"  {finding.kind:<14} {printable(finding.batch_id)}: {printable(finding.detail)}")
    if len(report.findings) > limit:
        lines.append(f"  ... and {len(report.findings) - limit} more (--json lists them all)")
    return "\n".join(lines)


def history_text(batch_id: str, events: list[dict[str, Any]], tz: ZoneInfo | None = None) -> str:
    """The audit trail within 100 columns: per event a line (the time in `tz` with UTC
    beside it; the event, the status change, who) and its details below as `key=value`
    (empty values left out, instants to the second; `--json` has everything)."""
    if not events:
        return f"no events for {batch_id}"
    lines = []
    for event in events:
        change = f"{event['old_status'] or '-'} -> {event['new_status'] or '-'}"
        raw = event["event_time"]
        instant = read_instant(raw) if isinstance(raw, str) else raw
        when = _second(instant) if instant is not None else str(raw)
        if instant is not None and tz is not None and not _is_utc(tz):  # local first, UTC beside
            when = f"{local_text(instant, tz, seconds=True)} ({instant.astimezone(UTC):%H:%M:%S} UTC)"
        head = f"{when}  {event['event_type']:<10} {change:<26} {printable(event['worker_id'] or '')}"
        lines.append(head if len(head) <= 100 else head[:97] + "...")
        details = printable(_details(event["details"]))
        if details:
            lines.extend(
                textwrap.wrap(
                    details,
                    100,
                    initial_indent="    ",
                    subsequent_indent="    ",
                    break_long_words=False,
                    break_on_hyphens=False,
                )
            )
    return "\n".join(lines)


def _second(instant: datetime) -> str:
    """`2026-03-08 06:00:00 UTC`: an instant to the second, for people."""
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _details(details: Any) -> str:
    """An event's details as `key=value` pairs: nulls left out, instants to the second."""
    if not details:
        return ""
    if isinstance(details, str):
        try:
            details = json.loads(details)
        except ValueError:
            return details
    if not isinstance(details, dict):
        return str(details)
    pairs = []
    for key, value in details.items():
        if value is None or value == "":
            continue
        if isinstance(value, str) and (instant := read_instant(value)) is not None and len(value) >= 19:
            value = _second(instant)
        elif isinstance(value, dict | list):
            value = json.dumps(value, separators=(",", ":"), default=str)
        pairs.append(f"{key}={value}")
    return "  ".join(pairs)


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


def mirror_text(result: MirrorResult) -> str:
    """`pipestate mirror`'s words: what was copied, how, and what --verify found."""
    how = "everything (full copy)" if result.full else "what changed since the last mirror"
    lines = [
        f"mirror {result.scope} -> {result.tables['state']} ({result.target}): {how}",
        f"  {result.rows} state rows, {result.events} events; {result.statements} statements "
        f"in {result.seconds:.2f}s",
    ]
    lines += [f"  {action}" for action in result.actions]
    if result.verify is not None:
        for name in ("state", "events"):
            part = result.verify[name]
            word = "equal" if part["equal"] else "DIFFERENT"
            lines.append(
                f"  verify {name}: {word} (source {part['source_rows']}, copy {part['copy_rows']} rows)"
            )
            for kind in ("missing", "extra", "different"):
                if part.get(kind):
                    more = part["counts"][kind] - len(part[kind])
                    listed = ", ".join(part[kind]) + (f" and {more} more" if more > 0 else "")
                    lines.append(f"    {kind}: {listed}")
    return "\n".join(lines)
