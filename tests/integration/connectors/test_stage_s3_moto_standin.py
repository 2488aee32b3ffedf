"""Stage `s3` against a STAND-IN: moto's S3 server (moto[server]) on 127.0.0.1, through s3fs.

moto implements the S3 REST API in-process, so s3fs/botocore speak real HTTP to it; it does not
prove IAM policies, eventual consistency or multipart limits of the real S3. The test at the
end runs against a real bucket when PIPESTATE_TEST_S3_URL (s3://bucket/prefix) is set, with
credentials from the usual AWS environment variables.
"""

from __future__ import annotations

import os
import uuid

import pytest

from pipestate.connectors import BatchContext, build_stage, build_target
from pipestate.errors import ConfigError

s3fs = pytest.importorskip("s3fs")

CREDENTIALS = {"key": "testing", "secret": "testing", "region": "us-east-1"}


@pytest.fixture
def bucket(moto_s3: str) -> str:
    name = f"stage-{uuid.uuid4().hex[:12]}"
    boto3 = pytest.importorskip("boto3")
    client = boto3.client(
        "s3",
        endpoint_url=moto_s3,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=name)
    return name


def s3_stage(endpoint: str, url: str, **extra):
    options = {"endpoint_url": endpoint, **CREDENTIALS}
    return build_stage({"type": "s3", "url": url, "storage_options": options, **extra})


@pytest.mark.parametrize("file_format", ["ndjson.gz", "parquet"])
def test_s3_stage_round_trip(moto_s3: str, bucket: str, batch: BatchContext, file_format: str):
    if file_format == "parquet":
        pytest.importorskip("pyarrow")
    stage = s3_stage(moto_s3, f"s3://{bucket}/raw/", format=file_format)
    assert stage.find(batch) is None
    records = [{"id": n, "name": f"n{n}", "tags": ["a", "b"]} for n in range(1200)]
    staged = stage.write(batch, records)
    ext = file_format
    assert staged.location == f"s3://{bucket}/raw/orders/2026/01/01/{batch.batch_id}.{ext}"
    assert staged.record_count == 1200 and staged.bytes > 0
    assert [r for c in stage.read(staged) for r in c.to_pylist()] == records
    # A fresh stage object (another worker, after a crash) finds the same file.
    again = s3_stage(moto_s3, f"s3://{bucket}/raw", format=file_format)
    assert again.find(batch) == staged
    listing = again.fs.ls(f"{bucket}/raw/orders/2026/01/01")  # type: ignore[attr-defined]
    assert listing == [f"{bucket}/raw/orders/2026/01/01/{batch.batch_id}.{ext}"]  # no temp left


def test_s3_stage_interrupted_write_is_not_found(moto_s3: str, bucket: str, batch: BatchContext):
    stage = s3_stage(moto_s3, f"s3://{bucket}")

    def failing():
        yield from ({"id": n} for n in range(10))
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        stage.write(batch, failing())
    assert stage.find(batch) is None
    assert stage.fs.find(bucket) == []  # type: ignore[attr-defined]


def test_s3_stage_to_sql_target_reload(moto_s3: str, bucket: str, batch: BatchContext, tmp_path):
    stage = s3_stage(moto_s3, f"s3://{bucket}/p")
    target = build_target({"url": f"sqlite:///{tmp_path / 't.db'}"})
    records = [{"id": n, "timestamp": "2026-01-01T10:00:00Z"} for n in range(7)]
    staged = stage.write(batch, records)
    assert target.load(batch, staged, stage).record_count == 7
    result = target.load(batch, stage.find(batch), stage)  # type: ignore[arg-type]
    assert (result.record_count, result.rows_deleted, target.count(batch)) == (7, 7, 7)


def test_s3_type_needs_s3_url() -> None:
    with pytest.raises(ConfigError, match=r"^\[stage\] url: must start with s3://"):
        build_stage({"type": "s3", "url": "file:///tmp/x"})


@pytest.mark.skipif(not os.environ.get("PIPESTATE_TEST_S3_URL"), reason="no PIPESTATE_TEST_S3_URL")
def test_real_s3_round_trip(batch: BatchContext) -> None:
    """REAL S3: PIPESTATE_TEST_S3_URL=s3://bucket/prefix, AWS_* credentials in the environment."""
    url = os.environ["PIPESTATE_TEST_S3_URL"].rstrip("/") + f"/pipestate-test-{uuid.uuid4().hex}"
    stage = build_stage({"type": "s3", "url": url})
    staged = stage.write(batch, [{"id": 1}, {"id": 2}])
    try:
        assert stage.find(batch) == staged
        assert [r for c in stage.read(staged) for r in c.to_pylist()] == [{"id": 1}, {"id": 2}]
    finally:
        stage.fs.rm(stage.root, recursive=True)  # type: ignore[attr-defined]


def test_s3_stage_changed_after_staging_changes_its_fingerprint(
    moto_s3: str, bucket: str, batch: BatchContext
) -> None:
    # Issue 20: the target step compares the stage with what the stage step recorded.
    stage = s3_stage(moto_s3, f"s3://{bucket}/raw/")
    staged = stage.write(batch, [{"id": n} for n in range(50)])
    assert staged.fingerprint and stage.find(batch) == staged
    other = s3_stage(moto_s3, f"s3://{bucket}/elsewhere/").write(batch, [{"id": n} for n in range(10)])
    stage.fs.copy(other.location, staged.location)  # type: ignore[attr-defined]
    found = s3_stage(moto_s3, f"s3://{bucket}/raw/").find(batch)
    assert found is not None and found.record_count == 10 and found.fingerprint != staged.fingerprint


def test_s3_stage_keys_from_hostile_batch_ids_stay_under_the_prefix(moto_s3: str, bucket: str) -> None:
    from datetime import UTC, datetime

    stage = s3_stage(moto_s3, f"s3://{bucket}/raw/")
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 1, tzinfo=UTC)
    for batch_id in ["../../escape", "/abs", "a\\b", "sp ace%3F?#", "x" * 400, "\x1b]0;t\x07"]:
        batch = BatchContext.for_window("orders", start, end, batch_id=batch_id)
        staged = stage.write(batch, [{"id": 1}])
        assert stage.find(batch) == staged
        assert [r["id"] for c in stage.read(staged) for r in c.to_pylist()] == [1]
    keys = stage.fs.find(bucket)  # type: ignore[attr-defined]
    assert keys and all(key.startswith(f"{bucket}/raw/orders/2026/01/01/") for key in keys)
