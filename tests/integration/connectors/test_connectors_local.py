"""The local connectors end to end: `files` source -> local `fsspec` stage -> `sql` target.

No stand-in here: these are the real connectors on the local disk, SQLite and DuckDB.
"""

from __future__ import annotations

import csv
import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipestate.connectors import BatchContext, build_source, build_stage, build_target
from pipestate.connectors.arrow import parse_instant, record_batches
from pipestate.errors import ConfigError, ConnectorError

START = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
END = datetime(2026, 1, 1, 11, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def events() -> list[dict]:
    """Records around the window [10:00, 11:00): the edges, inside, and just outside."""
    times = [
        START - timedelta(microseconds=1),
        START,
        START + timedelta(minutes=30),
        END - timedelta(milliseconds=1),
        END,
        END + timedelta(hours=1),
    ]
    return [{"id": n, "timestamp": iso(t), "amount": n * 1.5} for n, t in enumerate(times)]


INSIDE = [1, 2, 3]


def rows(chunks) -> list[dict]:
    """What a source or a stage yielded, as dicts."""
    return [record for chunk in record_batches(chunks) for record in chunk.to_pylist()]


def write_ndjson(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


# -- parse_instant ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-01T10:00:00Z", START),
        ("2026-01-01T11:00:00+01:00", START),
        ("2026-01-01 10:00:00", START),  # naive text: UTC
        (1767261600, START),  # epoch seconds
        (1767261600000, START),  # epoch millis, detected by size
        ("1767261600000", START),  # digits in a CSV cell
        (1767261600.5, START + timedelta(milliseconds=500)),
        (datetime(2026, 1, 1, 10), START),
    ],
)
def test_parse_instant(value: object, expected: datetime) -> None:
    assert parse_instant(value) == expected


def test_parse_instant_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_instant("yesterday")
    with pytest.raises(ValueError):
        parse_instant(None)


# -- files source ----------------------------------------------------------------------------


def test_files_source_ndjson_range_is_half_open(tmp_path: Path, batch: BatchContext) -> None:
    write_ndjson(tmp_path / "a.ndjson", events()[:3])
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in events()[3:])
    (tmp_path / "notes.txt").write_text("not data")
    source = build_source({"type": "files", "path": str(tmp_path)})
    got = [r["id"] for r in rows(source.extract(batch))]
    assert got == INSIDE  # the record at `start` is in, the one at `end` is out
    location, query = source.describe(batch)
    assert location == str(tmp_path) and "timestamp >= 2026-01-01T10:00:00+00:00" in query


def test_files_source_csv_epoch_and_naive_zone(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "ts"])
        writer.writerow(["a", "2026-01-01 11:00:00"])  # Paris wall time = 10:00 UTC: inside
        writer.writerow(["b", "2026-01-01 12:00:00"])  # = 11:00 UTC: the end, outside
    paris = BatchContext.for_window("orders", START, END, "Europe/Paris")
    source = build_source(
        {"type": "files", "path": str(path), "time_field": "ts", "naive_timezone": "Europe/Paris"}
    )
    assert [r["id"] for r in rows(source.extract(paris))] == ["a"]


def test_files_source_parquet(tmp_path: Path, batch: BatchContext) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    records = [{"id": r["id"], "timestamp": parse_instant(r["timestamp"])} for r in events()]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "events.parquet")
    source = build_source({"type": "files", "path": str(tmp_path / "*.parquet")})
    assert [r["id"] for r in rows(source.extract(batch))] == INSIDE


def test_files_source_bad_record_names_file_and_field(tmp_path: Path, batch: BatchContext) -> None:
    write_ndjson(tmp_path / "a.ndjson", [{"id": 1}])
    source = build_source({"type": "files", "path": str(tmp_path / "a.ndjson")})
    with pytest.raises(ConnectorError, match=r"a.ndjson: record 1 has no field 'timestamp'"):
        list(source.extract(batch))


# -- local stage -----------------------------------------------------------------------------


@pytest.mark.parametrize("file_format", ["ndjson.gz", "parquet"])
def test_local_stage_round_trip_and_find(tmp_path: Path, batch: BatchContext, file_format: str):
    if file_format == "parquet":
        pytest.importorskip("pyarrow")
    stage = build_stage({"url": str(tmp_path), "format": file_format})
    assert stage.find(batch) is None
    records = [{"id": n, "nested": {"k": [n, n + 1]}, "text": "é"} for n in range(2500)]
    staged = stage.write(batch, iter(records))
    key = f"orders/2026/01/01/{batch.batch_id}.{file_format}"
    assert staged.location == (tmp_path / key).as_uri()
    assert (staged.record_count, staged.file_count) == (2500, 1)
    assert staged.bytes == (tmp_path / key).stat().st_size > 0
    assert rows(stage.read(staged)) == records
    assert stage.find(batch) == staged  # a retry resumes from the staged file
    assert [p.name for p in (tmp_path / "orders/2026/01/01").iterdir()] == [Path(key).name]


def test_parquet_stage_refuses_chunks_whose_types_conflict(tmp_path: Path, batch: BatchContext) -> None:
    import pyarrow as pa

    stage = build_stage({"url": str(tmp_path), "format": "parquet"})
    chunks = [pa.RecordBatch.from_pylist([{"v": 1}]), pa.RecordBatch.from_pylist([{"v": "one"}])]
    with pytest.raises(ConnectorError, match="field 'v' is int64 in one chunk and string in another"):
        stage.write(batch, chunks)
    assert stage.find(batch) is None
    assert list(tmp_path.rglob("*.tmp")) == []


def test_local_stage_failed_write_leaves_nothing_found(tmp_path: Path, batch: BatchContext):
    stage = build_stage({"type": "local", "url": tmp_path.as_uri(), "key_template": "{batch_id}"})

    def failing():
        yield {"id": 1}
        raise RuntimeError("source broke mid-batch")

    with pytest.raises(RuntimeError):
        stage.write(batch, failing())
    assert stage.find(batch) is None
    assert list(tmp_path.iterdir()) == []  # the temporary file is cleaned up too


def test_local_stage_key_template_uses_local_date(tmp_path: Path) -> None:
    # 23:00 UTC on Dec 31 is 08:00 on Jan 1 in Tokyo.
    start = datetime(2025, 12, 31, 23, tzinfo=UTC)
    tokyo = BatchContext.for_window("p", start, start + timedelta(hours=1), "Asia/Tokyo")
    stage = build_stage({"url": str(tmp_path), "key_template": "{yyyy}{mm}{dd}/{hh}/{batch_id}"})
    staged = stage.write(tokyo, [])
    assert staged.location.endswith(f"/20260101/08/{tokyo.batch_id}.parquet")
    assert staged.record_count == 0 and rows(stage.read(staged)) == []


# -- sql target ------------------------------------------------------------------------------


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'target.db'}"


@pytest.fixture(params=["sqlite", "duckdb"])
def target_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "duckdb":
        pytest.importorskip("duckdb_engine")
        return f"duckdb:///{tmp_path / 'target.duckdb'}"
    return sqlite_url(tmp_path)


def test_sql_target_load_twice_replaces(tmp_path: Path, batch: BatchContext, target_url: str):
    stage = build_stage({"url": str(tmp_path / "stage")})
    target = build_target({"type": "sql", "url": target_url, "table": "events"})
    other = BatchContext.for_window("orders", END, END + timedelta(hours=1))
    assert target.count(batch) == 0  # before the table exists

    staged = stage.write(batch, [{"id": n, "timestamp": iso(START)} for n in range(5)])
    first = target.load(batch, staged, stage)
    assert (first.record_count, first.rows_deleted) == (5, 0)
    target.load(other, stage.write(other, [{"id": 99, "timestamp": iso(END)}]), stage)

    # A requeued batch whose source changed meanwhile: its rows are replaced, not added.
    staged = stage.write(batch, [{"id": n, "timestamp": iso(START)} for n in range(3)])
    second = target.load(batch, staged, stage)
    assert (second.record_count, second.rows_deleted) == (3, 5)
    assert second.load_id != first.load_id and second.location.endswith("#events")
    assert (target.count(batch), target.count(other)) == (3, 1)

    engine = sa.create_engine(target_url)
    with engine.connect() as conn:
        loaded = conn.execute(
            sa.text("SELECT pipestate_batch_id, timestamp, id FROM events ORDER BY id")
        ).all()
    engine.dispose()
    assert [r.id for r in loaded] == [0, 1, 2, 99]
    assert loaded[0].pipestate_batch_id == batch.batch_id
    assert parse_instant(loaded[0].timestamp) == START


def test_sql_target_failed_load_keeps_previous_rows(tmp_path: Path, batch: BatchContext):
    stage = build_stage({"url": str(tmp_path / "stage")})
    target = build_target({"url": sqlite_url(tmp_path), "time_field": "@timestamp"})
    target.load(batch, stage.write(batch, [{"id": 1, "@timestamp": iso(START)}] * 4), stage)

    class BrokenStage:
        def read(self, staged):
            yield from stage.read(staged)
            raise ConnectorError("stage went away")

    with pytest.raises(ConnectorError, match="stage went away"):
        target.load(batch, stage.find(batch), BrokenStage())  # type: ignore[arg-type]
    assert target.count(batch) == 4  # the transaction rolled back: old rows, no new ones


# -- registry and config errors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("builder", "cfg", "message"),
    [
        (build_source, {"type": "files"}, r"^\[source\] path: required key is missing$"),
        (
            build_source,
            {"type": "files", "path": "x", "bogus": 1},
            r"^\[source\] bogus: unknown key$",
        ),
        (build_source, {"type": "nope"}, r"^\[source\] type: unknown source type 'nope'"),
        (build_source, {"path": "x"}, r"^\[source\] type: required key is missing$"),
        (build_stage, {"bogus": 1}, r"^\[stage\] bogus: unknown key$"),
        (build_stage, {"format": "xml"}, r"^\[stage\] format: must be 'parquet' or 'ndjson.gz'"),
        (build_stage, {"key_template": "{pipeline}"}, r"^\[stage\] key_template: must contain"),
        (build_stage, {"key_template": "{yy}/{batch_id}"}, r"unknown placeholder \{yy\}"),
        (build_stage, {"type": "s3", "url": "/tmp/x"}, r"url: must start with s3://"),
        (build_target, {"batch_size": 0}, r"^\[target\] batch_size: must be > 0$"),
        (build_target, {"table": "a b"}, r"^\[target\] table: must be a plain SQL identifier"),
        (build_target, {"url": "nosuchdb://x"}, r"^\[target\] url: no driver for nosuchdb"),
        (build_target, {"type": "os:path"}, r"^\[target\] type: 'os:path' is not a class$"),
        (build_target, {"type": "no_such_module:X"}, r"^\[target\] type: cannot import"),
    ],
)
def test_bad_config_names_the_key(builder, cfg: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        builder(cfg)


class ListSource:
    """A custom source, as a user would write one: plain kwargs, no Options model."""

    def __init__(self, records: list[dict]) -> None:
        self.records = records

    def extract(self, batch):
        yield from self.records

    def describe(self, batch):
        return "memory", "all"


def test_custom_connector_by_module_path(batch: BatchContext) -> None:
    source = build_source({"type": f"{__name__}:ListSource", "records": [{"id": 1}]})
    assert list(source.extract(batch)) == [{"id": 1}]
    with pytest.raises(ConfigError, match=r"^\[source\] .*unexpected keyword argument 'bogus'"):
        build_source({"type": f"{__name__}:ListSource", "records": [], "bogus": 1})
    with pytest.raises(ConfigError, match="does not implement the stage protocol"):
        build_stage({"type": f"{__name__}:ListSource", "records": []})


def test_custom_connector_by_entry_point(monkeypatch: pytest.MonkeyPatch, batch) -> None:
    from importlib.metadata import EntryPoint

    import pipestate.connectors.registry as base

    point = EntryPoint("memory", f"{__name__}:ListSource", base.ENTRY_POINT_GROUP)

    def fake_entry_points(group: str, name: str):
        return [point] if (group, name) == (base.ENTRY_POINT_GROUP, "memory") else []

    monkeypatch.setattr(base, "entry_points", fake_entry_points)
    source = build_source({"type": "memory", "records": [{"id": 7}]})
    assert list(source.extract(batch)) == [{"id": 7}]


def test_missing_optional_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "fsspec", None)  # makes `import fsspec` fail
    with pytest.raises(ConfigError, match=r'pip install "pipestate\[s3\]"'):
        build_stage({"type": "s3", "url": "s3://bucket/prefix"})


def test_batch_context_rejects_naive_times() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        BatchContext.for_window("p", datetime(2026, 1, 1), datetime(2026, 1, 2))


def test_local_stage_works_without_fsspec(monkeypatch, tmp_path: Path, batch: BatchContext):
    import sys

    monkeypatch.setitem(sys.modules, "fsspec", None)
    stage = build_stage({"url": str(tmp_path)})
    assert type(stage.fs).__name__ == "_LocalFS"  # type: ignore[attr-defined]
    staged = stage.write(batch, [{"id": 1}, {"id": 2}])
    assert stage.find(batch) == staged and rows(stage.read(staged)) == [{"id": 1}, {"id": 2}]
