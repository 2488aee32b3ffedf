"""Pruning agrees with reading: whatever the files source skips (files, row groups, hive
folders) holds no record the reader would have put in the window (issue 20, point 1)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipestate.connectors import BatchContext, build_source
from pipestate.connectors.base import record_batches, utc_times

DAY = datetime(2026, 3, 8, tzinfo=UTC)  # New York's spring change falls on this day


def ids_in(source, start: datetime, end: datetime) -> list[int]:
    batch = BatchContext.for_window("orders", start, end)
    return sorted(r["id"] for chunk in record_batches(source.extract(batch)) for r in chunk.to_pylist())


def test_naive_parquet_in_another_zone_loses_nothing(tmp_path: Path) -> None:
    # The reproduction: 1,440 naive minutes in row groups of 60; every hourly window of the
    # day (in UTC) together must give back all of them.
    naive = [datetime(2026, 1, 1) + timedelta(minutes=m) for m in range(1440)]
    table = pa.table({"id": list(range(1440)), "ts": pa.array(naive, pa.timestamp("us"))})
    pq.write_table(table, tmp_path / "events.parquet", row_group_size=60)
    source = build_source(
        {"type": "files", "path": str(tmp_path), "time_field": "ts", "naive_timezone": "America/New_York"}
    )
    start = datetime(2026, 1, 1, 5, tzinfo=UTC)
    hours = [start + timedelta(hours=h) for h in range(25)]
    got = [i for low, high in zip(hours, hours[1:], strict=False) for i in ids_in(source, low, high)]
    assert sorted(got) == list(range(1440))


def test_a_nested_column_before_the_time_field_does_not_shift_its_statistics(tmp_path: Path) -> None:
    # A struct has one statistics leaf per field: the time field's leaf is not its Arrow index.
    times = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=m) for m in range(120)]
    meta = [{"a": 10**12 - m, "b": -m} for m in range(120)]
    stamps = pa.array(times, pa.timestamp("us", "UTC"))
    table = pa.table({"meta": meta, "id": list(range(120)), "timestamp": stamps})
    pq.write_table(table, tmp_path / "events.parquet", row_group_size=30)
    source = build_source({"type": "files", "path": str(tmp_path)})
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert ids_in(source, start, start + timedelta(hours=1)) == list(range(60))


def test_hive_folders_default_to_the_zone_of_naive_times(tmp_path: Path) -> None:
    # Folders named after the records' own (naive, New York) clock.
    folder = tmp_path / "dt=2026-01-01" / "hour=23"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("id,ts\n1,2026-01-01 23:30:00\n")
    source = build_source(
        {"type": "files", "path": str(tmp_path), "time_field": "ts", "naive_timezone": "America/New_York"}
    )
    start = datetime(2026, 1, 2, 4, tzinfo=UTC)  # 23:00 in New York
    assert ids_in(source, start, start + timedelta(hours=1)) == [1]


ZONES = ["UTC", "America/New_York", "Europe/Paris", "Australia/Lord_Howe", "Pacific/Apia", "Asia/Kolkata"]
KINDS = ["naive_us", "naive_ms", "naive_s", "naive_ns", "aware_ms", "epoch_s", "epoch_ms_float", "text"]


def column_of(kind: str, moments: list[datetime]) -> pa.Array:
    """`moments` (naive wall-clock values) as a column of `kind`."""
    if kind.startswith("naive_"):
        return pa.array(moments, pa.timestamp("us")).cast(pa.timestamp(kind.removeprefix("naive_")))
    if kind == "aware_ms":
        return pa.array([m.replace(tzinfo=UTC) for m in moments], pa.timestamp("ms", "UTC"))
    if kind == "epoch_s":
        return pa.array([int(m.replace(tzinfo=UTC).timestamp()) for m in moments], pa.int64())
    if kind == "epoch_ms_float":
        return pa.array([m.replace(tzinfo=UTC).timestamp() * 1000 for m in moments], pa.float64())
    return pa.array([m.isoformat(sep=" ") for m in moments], pa.string())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    zone_name=st.sampled_from(ZONES),
    kind=st.sampled_from(KINDS),
    group_rows=st.integers(1, 50),
    offsets=st.lists(st.integers(0, 3 * 24 * 60), min_size=1, max_size=150),
    window_start=st.integers(0, 3 * 24 - 1),
    window_hours=st.integers(1, 5),
)
def test_pruned_and_unpruned_reads_load_the_same_records(
    tmp_path: Path,
    zone_name: str,
    kind: str,
    group_rows: int,
    offsets: list[int],
    window_start: int,
    window_hours: int,
) -> None:
    # Minutes over three days around a DST change (gaps and repeated hours included).
    base = datetime(2026, 3, 7) if "Lord_Howe" not in zone_name else datetime(2026, 4, 4)
    moments = [base + timedelta(minutes=m) for m in sorted(offsets)]  # files are mostly in time order
    folder = tmp_path / uuid.uuid4().hex
    folder.mkdir()
    table = pa.table({"id": list(range(len(moments))), "ts": column_of(kind, moments)})
    pq.write_table(table, folder / "events.parquet", row_group_size=group_rows)
    options = {"type": "files", "path": str(folder), "time_field": "ts", "naive_timezone": zone_name}
    if kind.startswith("epoch"):
        options["epoch_unit"] = "s" if kind == "epoch_s" else "ms"
    source = build_source(options)
    start = base.replace(tzinfo=UTC) + timedelta(hours=window_start - 14)
    end = start + timedelta(hours=window_hours)
    # Unpruned: every value read the way the reader reads it, then filtered.
    times = utc_times(table.column("ts"), zone_name, options.get("epoch_unit", "auto")).to_pylist()
    expected = sorted(i for i, moment in enumerate(times) if start <= moment < end)
    assert ids_in(source, start, end) == expected
