"""`run_pipeline` end to end on the STAND-INS: Elasticsearch (the local HTTP server in
es_standin.py) -> S3 (moto's server) -> Snowflake (fakesnow, insert load method), with the
state table in SQLite. Every record in the window range reaches the target exactly once and
in its window, also after a requeue of completed batches. Stand-ins prove the connectors
work together through pipestate's runner; they do not prove the real services' behaviour.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from es_standin import EsStandin

from pipestate.config import Config
from pipestate.manager import PipelineStateManager
from pipestate.run.runner import run_pipeline

pytest.importorskip("elasticsearch")
pytest.importorskip("s3fs")
fakesnow = pytest.importorskip("fakesnow")
pytestmark = pytest.mark.filterwarnings(
    "ignore:Arrow output on a DB-API result makes an extra copy:UserWarning"
)

START = datetime(2026, 1, 1, tzinfo=UTC)
HOURS = 4


def _seed(es: EsStandin) -> dict[int, datetime]:
    inside: dict[int, datetime] = {}
    for n, minute in enumerate(range(-30, HOURS * 60 + 30, 7), start=1):  # some outside the range
        moment = START + timedelta(minutes=minute)
        es.add("orders-2026.01", {"id": n, "@timestamp": moment.isoformat().replace("+00:00", "Z")})
        if START <= moment < START + timedelta(hours=HOURS):
            inside[n] = moment
    return inside


@pytest.mark.parametrize("claim_batch", [1, 4], ids=["single", "runs"])
def test_elasticsearch_to_s3_to_snowflake_exactly_once(
    tmp_path: Path, moto_s3: str, claim_batch: int
) -> None:
    boto3 = pytest.importorskip("boto3")
    bucket = f"stage-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=moto_s3,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    with EsStandin() as es, fakesnow.patch():
        import snowflake.connector

        with snowflake.connector.connect(database="analytics", schema="raw") as conn:
            for statement in (
                "DATABASE analytics",
                "SCHEMA analytics.raw",
                "STAGE analytics.raw.pipestate_load",
            ):
                conn.cursor().execute(f"CREATE {statement.split()[0]} IF NOT EXISTS {statement.split()[1]}")
        inside = _seed(es)
        config = Config.from_dict(
            {
                "pipeline": {
                    "name": "orders",
                    "start": START.isoformat(),
                    "end": (START + timedelta(hours=HOURS)).isoformat(),
                },
                "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
                "concurrency": {"retry_backoff": "0s", "claim_batch": claim_batch},
                "source": {"type": "elasticsearch", "hosts": [es.url], "index": "orders-*", "page_size": 5},
                "stage": {
                    "type": "s3",
                    "url": f"s3://{bucket}/stage",
                    "storage_options": {
                        "endpoint_url": moto_s3,
                        "key": "testing",
                        "secret": "testing",
                        "region": "us-east-1",
                    },
                },
                "target": {
                    "type": "snowflake",
                    "account": "acme",
                    "user": "u",
                    "password": "p",
                    "database": "analytics",
                    "schema": "raw",
                    "table": "events",
                    "internal_stage": "@analytics.raw.pipestate_load",
                    "time_field": "@timestamp",
                },
            }
        )
        with PipelineStateManager(config) as manager:
            first = run_pipeline(manager)
            assert (first.created, first.summary.completed) == (HOURS, HOURS)
            manager.requeue(statuses=("COMPLETED",))
            again = run_pipeline(manager)  # every window loaded a second time: replaced, not doubled
            assert again.summary.completed == HOURS
            assert manager.counts() == {"COMPLETED": HOURS}
        import snowflake.connector

        with snowflake.connector.connect(database="analytics", schema="raw") as conn:
            cursor = conn.cursor()
            cursor.execute("SELECT id, pipestate_batch_id FROM analytics.raw.events")
            loaded = cursor.fetchall()
    ids = Counter(row[0] for row in loaded)
    assert set(ids) == set(inside), "records missing from, or extra in, the target"
    assert max(ids.values()) == 1, "a record was loaded twice"
    for record_id, batch_id in loaded:
        # default batch ids name the window: <pipeline>-<startZ>-<endZ>
        _, start_stamp, end_stamp = batch_id.split("-")
        start = datetime.strptime(start_stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        end = datetime.strptime(end_stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        assert start <= inside[record_id] < end, f"record {record_id} loaded into {batch_id}"
