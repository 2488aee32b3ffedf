"""`reconcile`: recount what the target (and the source) hold for each window against the state
table, after the fact; "exactly once" as a check a user can schedule.

One grouped query asks the target for its rows per `pipestate_batch_id` (with each batch's
first and last record time); the state table gives each window's recorded counts. Findings:
`missing` and `duplicated` (fewer or more rows than the load recorded), `out_of_window`
(rows whose time is outside their batch's window), `stray` (rows tagged with a batch of the
pipeline that is not COMPLETED, e.g. SUPERSEDED), `unknown_batch` (rows tagged with an id the
state table does not hold: re-tagged, or another pipeline's), and with the source,
`late_data` (the source holds more records than were extracted) and `source_changed` (fewer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..connectors.registry import build_source, build_target
from ..errors import ConfigError
from ..statuses import Status
from ..store import recount
from .context import Context, aware

__all__ = ["Finding", "ReconcileReport", "reconcile"]

KINDS = ("missing", "duplicated", "out_of_window", "stray", "unknown_batch", "late_data", "source_changed")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


@dataclass
class Finding:
    """One disagreement, about one batch id."""

    kind: str
    batch_id: str
    start: datetime | None
    end: datetime | None
    expected: int | None  # what the state table recorded
    found: int | None  # what the target (or the source) holds now
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "batch_id": self.batch_id,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "expected": self.expected,
            "found": self.found,
            "detail": self.detail,
        }


@dataclass
class ReconcileReport:
    """What `reconcile` checked and found; `ok` when it found nothing."""

    pipeline: str
    start: datetime | None
    end: datetime | None
    source_checked: bool
    windows: int = 0  # active windows in the range
    completed: int = 0  # of them COMPLETED, whose rows were recounted
    target_rows: int = 0  # rows the target holds in the range
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        counts = {kind: 0 for kind in KINDS}
        for finding in self.findings:
            counts[finding.kind] += 1
        return {
            "pipeline": self.pipeline,
            "ok": self.ok,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "source_checked": self.source_checked,
            "windows": self.windows,
            "completed": self.completed,
            "target_rows": self.target_rows,
            "counts": counts,
            "findings": [finding.to_dict() for finding in self.findings],
            "batch_ids": sorted({f.batch_id for f in self.findings if f.kind not in ("unknown_batch",)}),
            "seconds": round(self.seconds, 3),
        }


def reconcile(
    ctx: Context,
    start: datetime | None = None,
    end: datetime | None = None,
    with_source: bool = False,
    *,
    target: Any = None,
    source: Any = None,
) -> ReconcileReport:
    """Recount the target's rows (and `with_source`, the source's records) of the windows that
    start in [start, end) (None: unbounded) against the state table. Writes nothing.

    The connectors are built from the configuration unless given; the target must answer
    `batch_counts(start, end)` and the source `window_counts(windows)` (see
    `pipestate.connectors.BatchRows`); ConfigError when one cannot."""
    start, end = aware(start, "start"), aware(end, "end")
    config = ctx.config
    built = []
    if target is None:
        if not config.target:
            raise ConfigError("[target] type: required to reconcile (see docs/connectors.md)")
        target = build_target(config.target, base=config.base_dir)
        built.append(target)
    if with_source and source is None:
        if not config.source:
            raise ConfigError("[source] type: required for reconcile --source")
        source = build_source(config.source, base=config.base_dir)
        built.append(source)
    try:
        return _reconcile(ctx, target, source if with_source else None, start, end)
    finally:
        for connector in built:
            close = getattr(connector, "close", None)
            if callable(close):
                close()


def _reconcile(
    ctx: Context, target: Any, source: Any, start: datetime | None, end: datetime | None
) -> ReconcileReport:
    began = time.monotonic()
    if not callable(getattr(target, "batch_counts", None)):
        raise ConfigError(
            f"[target] type: {type(target).__name__} cannot count its rows by batch for reconcile"
        )
    if source is not None and not callable(getattr(source, "window_counts", None)):
        raise ConfigError(
            f"[source] type: {type(source).__name__} cannot count records per window for reconcile"
        )
    with ctx.store.transaction() as conn:
        windows = recount.windows_to_reconcile(ctx.store, conn, ctx.pipeline, start, end)
    report = ReconcileReport(ctx.pipeline, start, end, source is not None, windows=len(windows))
    # The target's rows of the range: those whose time is in it (a range given by its
    # windows' starts reaches to the last window's end).
    low = start if start is not None else None
    high = max((w[3] for w in windows), default=end) if end is not None else None
    held = target.batch_counts(low, high)
    report.target_rows = sum(rows.rows for rows in held.values())
    known = {w[0]: w for w in windows}
    for batch_id, status, w_start, w_end, _source_count, target_count in windows:
        if status != Status.COMPLETED:
            continue
        report.completed += 1
        rows = held.get(batch_id)
        found = rows.rows if rows is not None else 0
        expected = int(target_count) if target_count is not None else None
        if expected is not None and found < expected:
            detail = f"target holds {found} row(s), the load recorded {expected}"
            report.findings.append(Finding("missing", batch_id, w_start, w_end, expected, found, detail))
        elif expected is not None and found > expected:
            detail = f"target holds {found} row(s), the load recorded {expected}"
            report.findings.append(Finding("duplicated", batch_id, w_start, w_end, expected, found, detail))
        first, last = (rows.first, rows.last) if rows is not None else (None, None)
        if first is not None and last is not None and (first < w_start or last >= w_end):
            detail = f"row times {first.isoformat()} .. {last.isoformat()} outside the window"
            report.findings.append(Finding("out_of_window", batch_id, w_start, w_end, None, None, detail))
    others = [
        batch_id
        for batch_id, rows in held.items()
        if (batch_id not in known or known[batch_id][1] != Status.COMPLETED)
    ]
    if others:
        with ctx.store.transaction() as conn:
            elsewhere = recount.batches_by_id(ctx.store, conn, ctx.pipeline, others)
        for batch_id in sorted(others):
            rows = held[batch_id]
            row = elsewhere.get(batch_id)
            if row is None:
                detail = f"{rows.rows} row(s) tagged with a batch id the state table does not hold"
                report.findings.append(Finding("unknown_batch", batch_id, None, None, 0, rows.rows, detail))
            elif row[1] != Status.COMPLETED:
                detail = f"{rows.rows} row(s) of a batch that is {row[1]}"
                report.findings.append(Finding("stray", batch_id, row[2], row[3], 0, rows.rows, detail))
            else:  # a COMPLETED batch outside the range with rows whose time is inside it
                detail = f"{rows.rows} row(s) with times in the range, outside the batch's window"
                report.findings.append(
                    Finding("out_of_window", batch_id, row[2], row[3], None, rows.rows, detail)
                )
    if source is not None:
        _recount_source(report, source, [w for w in windows if w[1] == Status.COMPLETED])
    report.seconds = time.monotonic() - began
    return report


def _recount_source(report: ReconcileReport, source: Any, windows: list[Any]) -> None:
    counts = source.window_counts([(w[2], w[3]) for w in windows])
    for (batch_id, _status, w_start, w_end, recorded, _target), now in zip(windows, counts, strict=True):
        if recorded is None or int(recorded) == now:
            continue
        kind = "late_data" if now > int(recorded) else "source_changed"
        detail = f"source holds {now} record(s), {int(recorded)} were extracted"
        report.findings.append(Finding(kind, batch_id, w_start, w_end, int(recorded), now, detail))
