"""`pipestate metrics`: the figures to alert on, in the Prometheus text format (or
OpenMetrics), formatted by the official prometheus_client, for the node
exporter's textfile collector or a push gateway."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from ..statuses import STATUS_ORDER
from ..windows import iso

__all__ = ["metrics_json", "metrics_text"]


def _seconds(later: datetime, earlier: datetime | None) -> float | None:
    return None if earlier is None else max((later - earlier).total_seconds(), 0.0)


def _values(figures: dict[str, Any]) -> dict[str, float | None]:
    now: datetime = figures["now"]
    oldest = figures["oldest_pending"]
    complete_until = figures["complete_until"]
    # Nothing completed yet: the data is as stale as the range is long.
    watermark = complete_until if complete_until is not None else figures["range_start"]
    return {
        "failed_permanently": figures["failed_permanently"],
        "stuck_leases": figures["stuck_leases"],
        "oldest_pending_age_seconds": _seconds(now, oldest["end"]) if oldest else 0.0,
        "freshness_seconds": _seconds(figures.get("fresh_as_of", now), watermark),
        "complete_until": watermark.timestamp() if watermark is not None else None,
        "now": now.timestamp(),
    }


def metrics_text(pipeline: str, figures: dict[str, Any], openmetrics: bool = False) -> str:
    """The exposition text for one pipeline's `observe.alert_data` figures."""
    registry = CollectorRegistry(auto_describe=True)
    label = ["pipeline"]

    def gauge(name: str, doc: str, labels: list[str] = label) -> Gauge:
        return Gauge(name, doc, labels, registry=registry)

    windows = gauge("pipestate_windows", "Windows in the state table by status.", ["pipeline", "status"])
    counts = figures["counts"]
    for status in (*STATUS_ORDER, *sorted(set(counts) - set(STATUS_ORDER))):
        windows.labels(pipeline, status).set(counts.get(status, 0))
    values = _values(figures)
    described = {
        "failed_permanently": (
            "pipestate_failed_permanently_windows",
            "FAILED windows with no retries left (they wait for a requeue).",
        ),
        "stuck_leases": (
            "pipestate_stuck_leases",
            "IN_PROGRESS windows whose lease expired without a heartbeat.",
        ),
        "oldest_pending_age_seconds": (
            "pipestate_oldest_pending_age_seconds",
            "Now minus the end of the oldest PENDING window (0 when none is pending).",
        ),
        "freshness_seconds": (
            "pipestate_freshness_seconds",
            "min(now - lag, end) minus complete_until: how far behind the completed data is "
            "(0 once a range with an end is complete).",
        ),
        "complete_until": (
            "pipestate_complete_until_timestamp_seconds",
            "End of the last COMPLETED window before the first window that is not "
            "(the range start while none is completed).",
        ),
        "now": ("pipestate_scrape_timestamp_seconds", "The state database's clock when these were read."),
    }
    for key, (name, doc) in described.items():
        value = values[key]
        if value is not None:
            gauge(name, doc).labels(pipeline).set(value)
    mirrors = figures.get("mirrors") or []
    if mirrors:
        labels = ["pipeline", "scope"]
        age = gauge(
            "pipestate_mirror_age_seconds",
            "Seconds since `pipestate mirror` last committed its copy (scope: the pipeline or *).",
            labels,
        )
        behind = gauge(
            "pipestate_mirror_rows_behind",
            "State rows the next mirror would read (at most this many written since the last one): "
            "what the copy may not show yet.",
            labels,
        )
        for found in mirrors:
            age.labels(pipeline, found["scope"]).set(_seconds(figures["now"], found["mirrored_at"]) or 0.0)
            behind.labels(pipeline, found["scope"]).set(found["rows_behind"])
    output = generate_openmetrics(registry) if openmetrics else generate_latest(registry)
    return output.decode("utf-8")


def metrics_json(pipeline: str, figures: dict[str, Any]) -> dict[str, Any]:
    """The same figures as one JSON object (instants as UTC ISO 8601)."""
    values = _values(figures)
    oldest = figures["oldest_pending"]
    counts = figures["counts"]
    return {
        "pipeline": pipeline,
        "now": iso(figures["now"]),
        "windows": {status: counts.get(status, 0) for status in STATUS_ORDER}
        | {k: v for k, v in counts.items() if k not in STATUS_ORDER},
        "failed_permanently": figures["failed_permanently"],
        "stuck_leases": figures["stuck_leases"],
        "oldest_pending": None
        if oldest is None
        else {"start": iso(oldest["start"]), "end": iso(oldest["end"])},
        "oldest_pending_age_seconds": values["oldest_pending_age_seconds"],
        "complete_until": iso(figures["complete_until"] or figures["range_start"]),
        "freshness_seconds": values["freshness_seconds"],
        "mirrors": [
            {
                "scope": found["scope"],
                "mirrored_at": iso(found["mirrored_at"]),
                "age_seconds": _seconds(figures["now"], found["mirrored_at"]),
                "rows_behind": found["rows_behind"],
            }
            for found in figures.get("mirrors") or []
        ],
    }
