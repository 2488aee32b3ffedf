"""`pipestate run` end to end from the third-party search EMULATORS (not the real engines):

- noida-db (emulates Elasticsearch 8.15) -> S3 (moto's server, a STAND-IN) -> SQLite, by
  `pipestate run --workers 2`; and the same source -> S3 -> Snowflake (fakesnow, a STAND-IN,
  through the COPY path from Parquet) by `run_pipeline` in one process: fakesnow patches only
  the process it runs in, and `--workers` starts new ones;
- osmem-server (emulates OpenSearch) -> local stage -> DuckDB, by `pipestate run --workers 2`.
Every document of the range reaches the target exactly once, in its window's batch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from search_backends import ClientBackend

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result makes an extra copy:UserWarning"),
]
pytest.importorskip("pyarrow")

PIPESTATE = str(Path(sys.executable).with_name("pipestate"))
START = datetime(2026, 1, 1, tzinfo=UTC)
HOURS = 6


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def seed(backend: ClientBackend) -> tuple[str, dict[int, datetime]]:
    """Documents every 41 s over the range and half an hour either side, and 30 on each hour."""
    index = backend.create(shards=2)
    documents, inside = [], {}
    moment, n = START - timedelta(minutes=30), 0
    stamps = []
    while moment < START + timedelta(hours=HOURS, minutes=30):
        stamps.append(moment)
        moment += timedelta(seconds=41)
    stamps += [START + timedelta(hours=h) for h in range(HOURS + 1) for _ in range(30)]
    for n, stamp in enumerate(stamps, start=1):
        documents.append({"id": n, "@timestamp": iso(stamp), "amount": n * 0.5})
        if START <= stamp < START + timedelta(hours=HOURS):
            inside[n] = stamp
    backend.index(index, documents)
    return index, inside


def config(path: Path, source: dict[str, Any], stage: dict[str, Any], target: dict[str, Any]) -> Path:
    def table(values: dict[str, Any]) -> str:
        return "\n".join(
            f"{key} = {json.dumps(value)}" for key, value in values.items() if key != "storage_options"
        )

    text = f"""
[pipeline]
name = "orders"
start = "{START.isoformat()}"
end = "{(START + timedelta(hours=HOURS)).isoformat()}"

[state]
url = "sqlite:///{path / "state.db"}"

[concurrency]
retry_backoff = "0s"

[source]
{table(source)}

[stage]
{table(stage)}
"""
    if "storage_options" in stage:
        text += "\n[stage.storage_options]\n" + table(stage["storage_options"]) + "\n"
    text += f"\n[target]\n{table(target)}\n"
    file = path / "pipestate.toml"
    file.write_text(text, encoding="utf-8")
    return file


def run_workers(config_file: Path) -> dict[str, Any]:
    done = subprocess.run(
        [PIPESTATE, "run", "--workers", "2", "--json", "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def check_exactly_once(loaded: list[tuple[int, str]], inside: dict[int, datetime]) -> None:
    ids = Counter(record_id for record_id, _ in loaded)
    assert set(ids) == set(inside), "documents missing from, or extra in, the target"
    assert max(ids.values()) == 1, "a document was loaded twice"
    for record_id, batch_id in loaded:
        _, start_stamp, end_stamp = batch_id.split("-")  # <pipeline>-<startZ>-<endZ>
        start = datetime.strptime(start_stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        end = datetime.strptime(end_stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        assert start <= inside[record_id] < end, f"document {record_id} loaded into {batch_id}"


def read_sql(url: str) -> list[tuple[int, str]]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT id, pipestate_batch_id FROM events")).all()
    engine.dispose()
    return [(int(record_id), batch_id) for record_id, batch_id in rows]


def s3_stage(moto_s3: str) -> dict[str, Any]:
    boto3 = pytest.importorskip("boto3")
    bucket = f"stage-{uuid.uuid4().hex[:12]}"
    credentials = {
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "region_name": "us-east-1",
    }
    boto3.client("s3", endpoint_url=moto_s3, **credentials).create_bucket(Bucket=bucket)
    options = {"endpoint_url": moto_s3, "key": "testing", "secret": "testing", "region": "us-east-1"}
    return {"type": "s3", "url": f"s3://{bucket}/stage", "storage_options": options}


def test_elasticsearch_emulator_to_s3_to_sqlite_with_two_workers(tmp_path: Path, noida: str, moto_s3: str):
    index, inside = seed(ClientBackend(noida, "elasticsearch", "EMULATOR noida-db"))
    source = {"type": "elasticsearch", "hosts": [noida], "index": index, "page_size": 500, "slices": 2}
    target = {"type": "sql", "url": f"sqlite:///{tmp_path / 'target.db'}", "table": "events"}
    target["time_field"] = "@timestamp"
    result = run_workers(config(tmp_path, source, s3_stage(moto_s3), target))
    assert result["completed"] == HOURS and result["counts"] == {"COMPLETED": HOURS}
    check_exactly_once(read_sql(target["url"]), inside)


def test_elasticsearch_emulator_to_s3_to_snowflake(tmp_path: Path, noida: str, moto_s3: str) -> None:
    fakesnow = pytest.importorskip("fakesnow")
    from pipestate.config import Config
    from pipestate.manager import PipelineStateManager
    from pipestate.run.runner import run_pipeline

    index, inside = seed(ClientBackend(noida, "elasticsearch", "EMULATOR noida-db"))
    source = {"type": "elasticsearch", "hosts": [noida], "index": index, "page_size": 500}
    target = {"type": "snowflake", "account": "acme", "user": "u", "password": "p", "database": "analytics"}
    target |= {"schema": "raw", "table": "events", "time_field": "@timestamp"}
    target["internal_stage"] = "@analytics.raw.pipestate_load"
    with fakesnow.patch():
        import snowflake.connector

        with snowflake.connector.connect(database="analytics", schema="raw") as conn:
            for kind, name in (("DATABASE", "analytics"), ("SCHEMA", "analytics.raw")):
                conn.cursor().execute(f"CREATE {kind} IF NOT EXISTS {name}")
            conn.cursor().execute("CREATE STAGE IF NOT EXISTS analytics.raw.pipestate_load")
        cfg = Config.from_dict(
            {
                "pipeline": {
                    "name": "orders",
                    "start": START.isoformat(),
                    "end": (START + timedelta(hours=HOURS)).isoformat(),
                },
                "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
                "concurrency": {"retry_backoff": "0s"},
                "source": source,
                "stage": s3_stage(moto_s3),
                "target": target,
            }
        )
        with PipelineStateManager(cfg) as manager:
            assert run_pipeline(manager).summary.completed == HOURS
        with snowflake.connector.connect(database="analytics", schema="raw") as conn:
            cursor = conn.cursor()
            cursor.execute("SELECT id, pipestate_batch_id FROM analytics.raw.events")
            loaded = cursor.fetchall()
    check_exactly_once([(int(a), b) for a, b in loaded], inside)


@pytest.mark.duckdb
def test_opensearch_emulator_to_local_stage_to_duckdb_with_two_workers(tmp_path: Path, osmem: str) -> None:
    pytest.importorskip("duckdb_engine")
    index, inside = seed(ClientBackend(osmem, "opensearch", "EMULATOR osmem-server"))
    source = {"type": "opensearch", "hosts": [osmem], "index": index, "page_size": 500}
    stage = {"type": "local", "url": str(tmp_path / "stage")}
    target = {"type": "sql", "url": f"duckdb:///{tmp_path / 'target.duckdb'}", "table": "events"}
    target["time_field"] = "@timestamp"
    result = run_workers(config(tmp_path, source, stage, target))
    assert result["completed"] == HOURS and result["counts"] == {"COMPLETED": HOURS}
    check_exactly_once(read_sql(target["url"]), inside)
