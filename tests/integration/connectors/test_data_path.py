"""The Arrow data path: the files source's cache and pruning, the stage's parts, the typed table.

Real connectors on the local disk, SQLite, DuckDB and the local PostgreSQL; no stand-in.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import support

from pipestate.connectors import BatchContext, build_source, build_stage, build_target
from pipestate.connectors.arrow import record_batches
from pipestate.connectors.files import FilesSource, partition_span
from pipestate.errors import ConnectorError, TransientConnectorError, retryable
from pipestate.windows import zone

DAY = datetime(2026, 1, 1, tzinfo=UTC)
PG_URL = support.PG_URL


def rows(chunks) -> list[dict]:
    return [record for chunk in record_batches(chunks) for record in chunk.to_pylist()]


def hourly(hour: int) -> BatchContext:
    start = DAY + timedelta(hours=hour)
    return BatchContext.for_window("orders", start, start + timedelta(hours=1))


def write_day(path: Path, per_hour: int = 10) -> None:
    """One NDJSON file of a UTC day, not sorted by time (the last hour first)."""
    lines = []
    for hour in reversed(range(24)):
        for n in range(per_hour):
            moment = DAY + timedelta(hours=hour, minutes=n)
            lines.append(json.dumps({"id": hour * 100 + n, "timestamp": moment.isoformat()}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# -- files source ----------------------------------------------------------------------------


def test_a_daily_file_is_parsed_once_for_its_hourly_windows(tmp_path: Path, monkeypatch) -> None:
    write_day(tmp_path / "day.ndjson")
    source = build_source({"type": "files", "path": str(tmp_path)})
    parses = []
    original = FilesSource._read_whole
    monkeypatch.setattr(FilesSource, "_read_whole", lambda self, *a: parses.append(a) or original(self, *a))
    got = {hour: [r["id"] for r in rows(source.extract(hourly(hour)))] for hour in range(24)}
    assert len(parses) == 1
    assert all(got[hour] == [hour * 100 + n for n in range(10)] for hour in range(24))
    chunk = next(iter(source.extract(hourly(3))))
    assert isinstance(chunk, pa.RecordBatch) and chunk.schema.field("timestamp").type == pa.timestamp(
        "us", "UTC"
    )


def _three_days(folder: Path, kind: str = "ndjson") -> list[int]:
    """Three daily NDJSON (or CSV) files, a record every 6 minutes; the ids in time order."""
    ids = []
    for day in range(3):
        lines = ["id,timestamp"] if kind.startswith("csv") else []
        for minute in range(0, 24 * 60, 6):
            moment, number = DAY + timedelta(days=day, minutes=minute), day * 10_000 + minute
            record = {"id": number, "timestamp": moment.isoformat()}
            lines.append(f"{number},{moment.isoformat()}" if kind.startswith("csv") else json.dumps(record))
            ids.append(number)
        text = "\n".join(lines) + "\n"
        if kind.endswith(".gz"):
            (folder / f"day{day}.{kind}").write_bytes(gzip.compress(text.encode()))
        else:
            (folder / f"day{day}.{kind}").write_text(text)
    return ids


def _counting_parses(monkeypatch) -> list[str]:
    parses: list[str] = []
    original = FilesSource._read_whole
    monkeypatch.setattr(
        FilesSource,
        "_read_whole",
        lambda self, path, kind: parses.append(path.name) or original(self, path, kind),
    )
    return parses


@pytest.mark.parametrize("kind", ["ndjson", "csv", "ndjson.gz"])
def test_files_for_later_windows_are_only_probed_until_needed(tmp_path: Path, monkeypatch, kind) -> None:
    # A first window before all the data (a backfill that starts early): the first file is
    # parsed to learn its span; holding it for later, the others are probed (time field
    # only, nothing kept) and each is parsed whole once, when its day comes.
    ids = _three_days(tmp_path, kind)
    parses = _counting_parses(monkeypatch)
    source = build_source({"type": "files", "path": str(tmp_path)})
    assert rows(source.extract(hourly(-5))) == []
    assert parses == [f"day0.{kind}"]
    assert {Path(key[0]).name for key in source._cache} == {f"day0.{kind}"}  # type: ignore[attr-defined]
    assert len(source._spans) == 3  # type: ignore[attr-defined]
    got = [r["id"] for hour in range(72) for r in rows(source.extract(hourly(hour)))]
    assert got == ids
    assert sorted(parses) == [f"day{day}.{kind}" for day in range(3)]


def test_a_probe_that_cannot_read_the_field_leaves_it_to_the_whole_parse(tmp_path: Path, monkeypatch) -> None:
    _three_days(tmp_path)
    (tmp_path / "day1.ndjson").write_text(json.dumps({"id": 1, "timestamp": 1767312000}) + "\n")  # epoch
    parses = _counting_parses(monkeypatch)
    source = build_source({"type": "files", "path": str(tmp_path)})
    assert rows(source.extract(hourly(-5))) == []
    assert parses == ["day0.ndjson", "day1.ndjson"]  # numbers: not probed, parsed whole
    assert [r["id"] for r in rows(source.extract(hourly(24)))] == [1]  # 2026-01-02T00:00Z
    # A record with no time is reported by the whole parse, naming it, probe or not.
    (tmp_path / "day2.ndjson").write_text(json.dumps({"id": 2}) + "\n")
    with pytest.raises(ConnectorError, match=r"day2.ndjson: record 1 has no field 'timestamp'"):
        rows(build_source({"type": "files", "path": str(tmp_path)}).extract(hourly(-5)))


def test_over_its_budget_the_cache_drops_the_file_needed_last(tmp_path: Path, monkeypatch) -> None:
    # A budget for one and a half parsed files: the file this window reads stays, the one
    # whose records start last leaves (least recently used would drop the one in use).
    ids = _three_days(tmp_path)
    source = build_source({"type": "files", "path": str(tmp_path)})
    one_day = source._read_whole(tmp_path / "day0.ndjson", "ndjson").nbytes  # type: ignore[attr-defined]
    source._cache_bytes = one_day + one_day // 2  # type: ignore[attr-defined]
    # Their text is bigger than their columns: say they fit, so the cache is what is tested.
    monkeypatch.setattr("pipestate.connectors.files._parsed_estimate", lambda path, size: 0)
    parses = _counting_parses(monkeypatch)
    assert len(rows(source.extract(hourly(0)))) == 10
    assert {Path(key[0]).name for key in source._cache} == {"day0.ndjson"}  # type: ignore[attr-defined]
    got = [r["id"] for hour in range(72) for r in rows(source.extract(hourly(hour)))]
    assert got == ids
    assert parses.count("day0.ndjson") == 1


def test_a_file_too_big_for_the_cache_is_streamed_with_the_same_records(tmp_path: Path) -> None:
    write_day(tmp_path / "day.ndjson.gz".replace(".gz", ""))
    cached = build_source({"type": "files", "path": str(tmp_path)})
    streamed = build_source({"type": "files", "path": str(tmp_path), "cache_mb": 0})
    for hour in (0, 7, 23):
        assert rows(streamed.extract(hourly(hour))) == rows(cached.extract(hourly(hour)))
    assert not streamed._cache  # type: ignore[attr-defined]


def test_parquet_row_groups_outside_the_window_are_not_read(tmp_path: Path, monkeypatch) -> None:
    times = [DAY + timedelta(hours=h, minutes=m) for h in range(6) for m in range(0, 60, 10)]
    table = pa.table({"id": list(range(len(times))), "timestamp": pa.array(times, pa.timestamp("us", "UTC"))})
    pq.write_table(table, tmp_path / "events.parquet", row_group_size=6)  # one row group per hour
    read: list[int] = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pq.ParquetFile,
        "read_row_group",
        lambda self, i, *a, **k: read.append(i) or original(self, i, *a, **k),
    )
    source = build_source({"type": "files", "path": str(tmp_path)})
    assert [r["id"] for r in rows(source.extract(hourly(2)))] == list(range(12, 18))
    assert read == [2]
    assert rows(source.extract(hourly(9))) == [] and read == [2]  # the file's span misses: not opened


def test_hive_partition_folders_outside_the_window_are_skipped(tmp_path: Path) -> None:
    inside = tmp_path / "dt=2026-01-01" / "hour=10" / "a.ndjson"
    elsewhere = tmp_path / "dt=2026-01-01" / "hour=12" / "b.ndjson"
    inside.parent.mkdir(parents=True)
    elsewhere.parent.mkdir(parents=True)
    inside.write_text(json.dumps({"id": 1, "timestamp": "2026-01-01T10:15:00Z"}) + "\n")
    # Filed under the wrong hour on purpose: pruning means the file is never opened.
    elsewhere.write_text(json.dumps({"id": 2, "timestamp": "2026-01-01T10:30:00Z"}) + "\n")
    source = build_source({"type": "files", "path": str(tmp_path)})
    assert [r["id"] for r in rows(source.extract(hourly(10)))] == [1]


def test_partition_span_reads_the_common_layouts() -> None:
    utc, new_york = zone("UTC"), zone("America/New_York")
    assert partition_span(Path("x/dt=2026-03-07/hour=05/f.parquet"), utc) == (
        datetime(2026, 3, 7, 5, tzinfo=UTC),
        datetime(2026, 3, 7, 6, tzinfo=UTC),
    )
    assert partition_span(Path("year=2026/month=12/f.csv"), utc) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    # A wall-clock day in New York on the autumn change is 25 hours long.
    low, high = partition_span(Path("date=2026-11-01/f.ndjson"), new_york)  # type: ignore[misc]
    assert high - low == timedelta(hours=25)
    assert partition_span(Path("dt=latest/f.ndjson"), utc) is None
    assert partition_span(Path("plain/f.ndjson"), utc) is None


def test_unreadable_time_names_file_record_and_field(tmp_path: Path) -> None:
    (tmp_path / "a.ndjson").write_text(
        json.dumps({"id": 1, "timestamp": "2026-01-01T10:00:00Z"})
        + "\n"
        + json.dumps({"id": 2, "timestamp": "soon"})
        + "\n"
    )
    source = build_source({"type": "files", "path": str(tmp_path)})
    with pytest.raises(ConnectorError, match=r"a.ndjson: record 2 has an unreadable 'timestamp'"):
        rows(source.extract(hourly(10)))


# -- stage -----------------------------------------------------------------------------------


def test_a_big_batch_is_split_into_parts_listed_by_a_manifest(tmp_path: Path) -> None:
    batch = hourly(0)
    stage = build_stage({"url": str(tmp_path), "max_file_mb": 1})
    noise = [{"id": n, "blob": os.urandom(300).hex()} for n in range(6000)]  # about 1.8 MB as Parquet
    chunks = [pa.RecordBatch.from_pylist(noise[i : i + 1000]) for i in range(0, 6000, 1000)]
    staged = stage.write(batch, chunks)
    assert staged.file_count >= 2 and len(staged.files) == staged.file_count
    assert staged.location.endswith(".manifest.json") and staged.record_count == 6000
    assert staged.bytes == sum(Path(uri.removeprefix("file://")).stat().st_size for uri in staged.files)
    assert stage.find(batch) == staged
    assert rows(stage.read(staged)) == noise
    # Staged again, small this time: one file, and the old parts are no longer found.
    small = stage.write(batch, [pa.RecordBatch.from_pylist(noise[:5])])
    assert small.file_count == 1 and stage.find(batch) == small
    assert not list(tmp_path.rglob("*.manifest.json"))


def test_chunks_with_a_new_field_start_a_new_part(tmp_path: Path) -> None:
    batch = hourly(0)
    stage = build_stage({"url": str(tmp_path)})
    first = pa.RecordBatch.from_pylist([{"id": 1, "note": None}])  # a null-typed column
    second = pa.RecordBatch.from_pylist([{"id": 2}])  # a field missing
    third = pa.RecordBatch.from_pylist([{"id": 3, "note": "x", "extra": 1.5}])
    staged = stage.write(batch, [first, second, third])
    assert staged.record_count == 3 and staged.file_count == 2
    got = rows(stage.read(staged))
    assert [r["id"] for r in got] == [1, 2, 3] and got[2]["extra"] == 1.5


def test_parquet_stage_dictionary_encodes_text_only(tmp_path: Path) -> None:
    # Text repeats (an event name); ids, amounts and instants mostly do not, and a dictionary
    # that overflows is written and then thrown away: only text columns get one.
    batch = hourly(0)
    stage = build_stage({"url": str(tmp_path)})
    records = [
        {"id": n, "event": "view" if n % 3 else "click", "amount": n / 7, "ctx": {"tag": "a", "n": n}}
        for n in range(5000)
    ]
    staged = stage.write(batch, [pa.RecordBatch.from_pylist(records)])
    group = pq.ParquetFile(staged.location.removeprefix("file://")).metadata.row_group(0)
    dictionary = {
        group.column(i).path_in_schema
        for i in range(group.num_columns)
        if any("DICTIONARY" in encoding for encoding in group.column(i).encodings)
    }
    assert dictionary == {"event", "ctx.tag"}
    assert rows(stage.read(staged)) == records


@pytest.mark.duckdb
def test_duckdb_target_settings_default_and_yield_to_the_url(tmp_path: Path) -> None:
    path = tmp_path / "target.duckdb"
    seen = {}
    for url in (f"duckdb:///{path}", f"duckdb:///{path}?checkpoint_threshold=1GB&threads=2"):
        sink = build_target({"type": "sql", "url": url, "table": "events"})
        try:
            with sink.engine.connect() as conn:  # type: ignore[attr-defined]
                seen[url] = conn.exec_driver_sql(
                    "SELECT current_setting('checkpoint_threshold'), current_setting('threads')"
                ).one()
                if "?" not in url:
                    # Set on the connection, not given as connect-time config: a second
                    # connection to the file in this process (a user's own, a check) opens.
                    assert _select(f"duckdb:///{path}", "SELECT 42") == [(42,)]
        finally:
            sink.close()  # type: ignore[attr-defined]
    assert list(seen.values()) == [("30.5 MiB", 1), ("953.6 MiB", 2)]


# -- typed landing table ---------------------------------------------------------------------


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("duckdb", marks=pytest.mark.duckdb),
        pytest.param("postgresql", marks=pytest.mark.postgres),
    ]
)
def landing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(target URL, table name) on each target database; PostgreSQL's table dropped after."""
    table = f"land_{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'target.db'}", table
    elif request.param == "duckdb":
        yield f"duckdb:///{tmp_path / 'target.duckdb'}", table
    else:
        if problem := support.pg_reachable(PG_URL):
            pytest.skip(problem)
        yield PG_URL, table
        engine = sa.create_engine(PG_URL)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))
        engine.dispose()


def _select(url: str, sql: str) -> list[sa.Row]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql)))
    finally:
        engine.dispose()


def _load(url: str, table: str, tmp_path: Path, records: list[dict], hour: int = 0, **target) -> int:
    batch = hourly(hour)
    stage = build_stage({"url": str(tmp_path / "stage")})
    sink = build_target({"type": "sql", "url": url, "table": table, **target})
    try:
        return sink.load(batch, stage.write(batch, [pa.RecordBatch.from_pylist(records)]), stage).record_count
    finally:
        sink.close()  # type: ignore[attr-defined]


def test_an_empty_load_still_replaces_what_an_earlier_load_left(landing: tuple[str, str], tmp_path: Path):
    # A window whose source lost its records (a requeue after a fix upstream): the empty
    # load takes no write transaction when the target holds nothing for the batch, and
    # still deletes what an earlier load of the batch left.
    url, table = landing
    batch = hourly(0)
    stage = build_stage({"url": str(tmp_path / "stage")})
    sink = build_target({"type": "sql", "url": url, "table": table})
    try:
        empty = stage.write(batch, [])
        first = sink.load(batch, empty, stage)
        assert (first.record_count, first.rows_deleted) == (0, 0)
        records = [{"id": n, "timestamp": "2026-01-01T00:10:00Z"} for n in range(3)]
        full = stage.write(batch, [pa.RecordBatch.from_pylist(records)])
        assert sink.load(batch, full, stage).record_count == 3
        again = sink.load(batch, stage.write(batch, []), stage)
        assert (again.record_count, again.rows_deleted) == (0, 3)
        assert sink.count(batch) == 0
    finally:
        sink.close()  # type: ignore[attr-defined]


def test_typed_columns_nested_json_and_a_new_field(landing: tuple[str, str], tmp_path: Path) -> None:
    url, table = landing
    first = [
        {"id": 1, "timestamp": "2026-01-01T00:10:00Z", "amount": 2.5, "ok": True, "tags": {"a": [1, 2]}},
        {"id": 2, "timestamp": "2026-01-01T00:20:00+01:00", "amount": None, "ok": False, "tags": None},
    ]
    assert _load(url, table, tmp_path, first) == 2
    later = [{"id": 3, "timestamp": "2026-01-01T01:05:00Z", "amount": 1, "country": "FR"}]
    assert _load(url, table, tmp_path, later, hour=1) == 1
    got = _select(url, f'SELECT id, "timestamp", amount, ok, tags, country FROM "{table}" ORDER BY id')
    assert [r.id for r in got] == [1, 2, 3]
    assert support_instant(got[1].timestamp) == datetime(2025, 12, 31, 23, 20, tzinfo=UTC)
    assert got[0].amount == 2.5 and got[2].amount == 1.0 and got[1].amount is None
    assert bool(got[0].ok) is True and got[2].ok is None
    tags = got[0].tags if isinstance(got[0].tags, dict) else json.loads(got[0].tags)
    assert tags == {"a": [1, 2]}
    assert (got[0].country, got[2].country) == (None, "FR")


def support_instant(value: object) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def test_a_type_conflict_fails_the_batch_naming_field_and_types(landing: tuple[str, str], tmp_path: Path):
    url, table = landing
    _load(url, table, tmp_path, [{"id": 1, "timestamp": "2026-01-01T00:10:00Z"}])
    with pytest.raises(
        ConnectorError, match=rf"field 'id': column id of .*{table}.* is [A-Za-z ]+, this batch has string"
    ) as raised:
        _load(url, table, tmp_path, [{"id": "one", "timestamp": "2026-01-01T00:10:00Z"}])
    assert [r.id for r in _select(url, f'SELECT id FROM "{table}"')] == [1]  # the earlier load stays
    assert retryable(raised.value) is False  # the same data fails the same way: FAILED for good


def test_a_value_the_declared_column_refuses_is_terminal(landing: tuple[str, str], tmp_path: Path):
    # Text into a DOUBLE column the config declares: the database refuses it on every retry.
    url, table = landing
    if url.startswith("sqlite"):
        pytest.skip("SQLite stores any value in any column: nothing to refuse")
    declared = {"columns": {"amount": "DOUBLE PRECISION"}}
    with pytest.raises(ConnectorError, match="target: cannot load batch") as raised:
        _load(url, table, tmp_path, [{"amount": "lots", "timestamp": "2026-01-01T00:10:00Z"}], **declared)
    assert retryable(raised.value) is False


@pytest.mark.duckdb
def test_a_locked_duckdb_target_says_so_once_and_gives_up_after_busy_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "target.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb,time; c=duckdb.connect({str(target)!r}); print(1, flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"1"
        began = time.monotonic()
        with caplog.at_level("WARNING", logger="pipestate"), pytest.raises(TransientConnectorError) as raised:
            _load(
                f"duckdb:///{target}",
                "t",
                tmp_path,
                [{"id": 1, "timestamp": "2026-01-01T00:10:00Z"}],
                busy_timeout=1,
            )
        assert time.monotonic() - began < 10
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    said = [r.getMessage() for r in caplog.records if "busy" in r.getMessage()]
    assert len(said) == 1 and str(target) in said[0] and "waiting up to 1 s" in said[0], said
    assert "busy_timeout = 1 s" in " ".join(getattr(raised.value, "__notes__", []))


def test_raw_mode_keeps_the_whole_record(landing: tuple[str, str], tmp_path: Path) -> None:
    url, table = landing
    record = {"id": 7, "timestamp": "2026-01-01T00:10:00Z", "deep": {"x": {"y": "z"}}}
    _load(url, table, tmp_path, [record], raw=True)
    (row,) = _select(url, f'SELECT id, record FROM "{table}"')
    raw = row.record if isinstance(row.record, dict) else json.loads(row.record)
    assert row.id == 7 and raw["deep"] == {"x": {"y": "z"}} and raw["id"] == 7


def test_declared_columns_set_the_type(landing: tuple[str, str], tmp_path: Path) -> None:
    url, table = landing
    _load(
        url,
        table,
        tmp_path,
        [{"id": 7, "timestamp": "2026-01-01T00:10:00Z", "code": 42}],
        columns={"code": "TEXT"},
    )
    (row,) = _select(url, f'SELECT code FROM "{table}"')
    assert str(row.code) == "42"


def test_a_table_of_the_earlier_record_layout_asks_for_raw(tmp_path: Path) -> None:
    url, table = f"sqlite:///{tmp_path / 'old.db'}", "events"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE events (pipestate_batch_id VARCHAR(255) NOT NULL, "
                "pipestate_loaded_at DATETIME NOT NULL, timestamp DATETIME, record TEXT NOT NULL)"
            )
        )
    engine.dispose()
    record = {"id": 1, "timestamp": "2026-01-01T00:10:00Z"}
    with pytest.raises(ConnectorError, match=r"earlier layout .* set \[target\] raw = true"):
        _load(url, table, tmp_path, [record])
    assert _load(url, table, tmp_path, [record], raw=True) == 1
    (row,) = _select(url, "SELECT id, record FROM events")
    assert row.id == 1 and json.loads(row.record)["id"] == 1


def test_a_field_that_appears_late_in_a_big_file_is_read(tmp_path: Path) -> None:
    # More than one parse block (1 MB) before the new field: the streamed read cannot take
    # it, the whole-file read does.
    lines = [
        json.dumps({"id": n, "timestamp": "2026-01-01T10:00:00Z", "pad": "x" * 40}) for n in range(30_000)
    ]
    lines.append(json.dumps({"id": 30_000, "timestamp": "2026-01-01T10:30:00Z", "late": {"k": 1}}))
    (tmp_path / "big.ndjson").write_text("\n".join(lines) + "\n")
    got = rows(build_source({"type": "files", "path": str(tmp_path)}).extract(hourly(10)))
    assert len(got) == 30_001 and got[-1]["late"] == {"k": 1} and got[0]["late"] is None


def test_nested_values_become_the_same_json_as_json_dumps() -> None:
    from pipestate.connectors.arrow import dumps
    from pipestate.connectors.landing import _json_text

    values = [
        {"s": 'q"\\x', "n": 1, "f": 1.5, "b": True, "l": [1, None, 3], "st": {"k": "é"}},
        None,
        {"s": "line\nbreak", "n": None, "f": None, "b": False, "l": None, "st": None},
    ]
    column = pa.Table.from_pylist([{"v": v} for v in values]).column("v")
    got = _json_text(column).to_pylist()
    assert [None if g is None else json.loads(g) for g in got] == [
        json.loads(dumps(v)) if v else None for v in values
    ]


def test_one_load_whose_chunks_bring_a_new_field(landing: tuple[str, str], tmp_path: Path) -> None:
    # The second chunk adds a column in the middle of the load (PostgreSQL: between two COPYs).
    url, table = landing
    batch = hourly(0)
    stage = build_stage({"url": str(tmp_path / "stage")})
    first = pa.RecordBatch.from_pylist([{"id": n, "timestamp": "2026-01-01T00:10:00Z"} for n in range(3)])
    second = pa.RecordBatch.from_pylist([{"id": 9, "timestamp": "2026-01-01T00:20:00Z", "country": "FR"}])
    sink = build_target({"type": "sql", "url": url, "table": table})
    try:
        assert sink.load(batch, stage.write(batch, [first, second]), stage).record_count == 4
    finally:
        sink.close()  # type: ignore[attr-defined]
    got = _select(url, f'SELECT id, country FROM "{table}" ORDER BY id')
    assert [(r.id, r.country) for r in got] == [(0, None), (1, None), (2, None), (9, "FR")]
