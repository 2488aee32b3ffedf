"""What populate and validate found and did (contract section 5): the result model and its JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from ..ids import default_batch_id
from ..planning import seconds_to_minutes
from ..plans import Fill, Plan, dominant, fill_cells
from ..windows import format_step, iso

if TYPE_CHECKING:
    pass

__all__ = ["CreatedLog", "PopulateReport"]


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
