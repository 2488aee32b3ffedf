"""What populate and validate found and did: JSON (contract section 5) and plain text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from .planning import Fill, Plan, dominant, fill_cells, seconds_to_minutes
from .plugins import default_batch_id
from .windows import format_step

__all__ = ["CreatedLog", "PopulateReport", "iso"]


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with an explicit offset, as every JSON output writes instants."""
    return None if value is None else value.astimezone(UTC).isoformat()


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
        plan = self.plan
        analysis = plan.analysis
        header = self.header()
        lines = [
            f"pipeline {self.pipeline}: {verb}{' (dry run: nothing written)' if self.dry_run else ''}",
            f"  range       {header['range']['start']} .. {header['range']['end']}",
        ]
        if analysis.active_windows:
            dominant_minutes = header["analysis"]["dominant_duration_minutes"]
            lines.append(
                f"  found       {analysis.active_windows} active window(s) from {iso(analysis.first_start)} "
                f"to {iso(analysis.last_end)}, mostly {dominant_minutes} min"
            )
        elif self.table_missing:
            lines.append("  found       no state table yet")
        else:
            lines.append("  found       no active windows")
        sections = [
            ("gaps", [f"{g.kind:<16} {iso(g.start)} .. {iso(g.end)}" for g in plan.gaps]),
            (
                "overlaps",
                [
                    f"kept {r.kept.batch_id}, superseded {r.superseded.batch_id}: {r.reason}"
                    for r in plan.resolutions
                ],
            ),
            ("invalid rows", [f"{row.batch_id}: {row.reason}" for row in plan.invalid]),
        ]
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
                    f"    {fill.origin:<9} {fill.local_date} {iso(fill.start)} .. {iso(fill.end)} "
                    f"on the {format_step(fill.step)} grid"
                )
            if len(plan.fills) > limit:
                lines.append(f"    ... and {len(plan.fills) - limit} more stretches")
            did = "would supersede" if self.dry_run else "superseded"
            lines.append(f"  {did:<11} {len(plan.resolutions)} window(s)")
        return "\n".join(lines)
