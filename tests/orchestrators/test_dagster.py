"""The Dagster integration against the real Dagster: `materialize(...)` in process.

The pipeline is in America/New_York, so a partition (a local day) is 05:00 to
05:00 UTC; the definitions are the example's (docs/examples/dagster_defs.py).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

dg = pytest.importorskip("dagster", reason="Dagster is installed in the orchestrator venv only")

from orchestrated import statuses, target_count  # noqa: E402

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "dagster_defs.py"
# Events of local day D in New York (UTC-5 in January), by the UTC text the SQLite target holds.
NY_DAY = {
    "2026-01-01": "timestamp >= '2026-01-01 05:00' AND timestamp < '2026-01-02 05:00'",
    "2026-01-02": "timestamp >= '2026-01-02 05:00' AND timestamp < '2026-01-03 05:00'",
    "2026-01-03": "timestamp >= '2026-01-03 05:00' AND timestamp < '2026-01-04 05:00'",
}


def load_example(config: Path) -> ModuleType:
    """docs/examples/dagster_defs.py with PIPESTATE_CONFIG pointing at `config`."""
    os.environ["PIPESTATE_CONFIG"] = str(config)
    try:
        spec = importlib.util.spec_from_file_location("dagster_defs", EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        del os.environ["PIPESTATE_CONFIG"]
    return module


@pytest.fixture
def instance() -> Iterator[object]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def materialize(example: ModuleType, instance: object, **kwargs: object) -> object:
    return dg.materialize(
        [example.orders],
        resources=example.defs.resources,
        instance=instance,
        **kwargs,
    )


def metadata_of(result: object, partitions: int = 1) -> dict[str, object]:
    """The materialization's metadata (a range run records one materialization per partition)."""
    events = result.asset_materializations_for_node("orders")  # type: ignore[attr-defined]
    assert len(events) == partitions
    return {key: value.value for key, value in events[0].metadata.items()}


def test_partitions_are_the_pipelines_local_days(pipeline: Callable[..., Path]) -> None:
    example = load_example(pipeline(days=3, timezone="America/New_York"))
    partitions = example.orders.partitions_def
    assert partitions.timezone == "America/New_York"
    assert partitions.get_partition_keys() == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert example.defs.resolve_job_def("orders_daily") is not None


def test_one_partition_runs_that_days_windows_only_and_again_on_rematerialization(
    pipeline: Callable[..., Path], instance: object
) -> None:
    config = pipeline(days=3, timezone="America/New_York")
    example = load_example(config)
    result = materialize(example, instance, partition_key="2026-01-02")
    assert result.success  # type: ignore[attr-defined]
    # populate made all three days; only the partition's 24 windows ran.
    assert statuses(config) == {"COMPLETED": 24, "PENDING": 48}
    assert target_count(config) == 24 * 4 == target_count(config, NY_DAY["2026-01-02"])
    first = metadata_of(result)
    assert (first["windows"], first["completed_windows"], first["requeued"]) == (24, 24, 0)
    assert first["start"] == "2026-01-02T05:00:00+00:00" and first["end"] == "2026-01-03T05:00:00+00:00"

    again = materialize(example, instance, partition_key="2026-01-02")
    assert again.success  # type: ignore[attr-defined]
    second = metadata_of(again)
    assert (second["requeued"], second["batches_completed"]) == (24, 24)
    # Read again and replaced in the target, not duplicated.
    assert target_count(config) == 24 * 4
    assert statuses(config) == {"COMPLETED": 24, "PENDING": 48}
    assert instance.get_materialized_partitions(dg.AssetKey("orders")) == {"2026-01-02"}  # type: ignore[attr-defined]


def test_a_backfill_of_several_days(pipeline: Callable[..., Path], instance: object) -> None:
    config = pipeline(days=3, timezone="America/New_York")
    example = load_example(config)
    # One run per partition (Dagster's default backfill policy) ...
    for day in ("2026-01-01", "2026-01-03"):
        assert materialize(example, instance, partition_key=day).success  # type: ignore[attr-defined]
    assert statuses(config) == {"COMPLETED": 48, "PENDING": 24}
    # ... and one run over a range of partitions, as a single-run backfill launches it.
    ranged = materialize(
        example,
        instance,
        tags={
            "dagster/asset_partition_range_start": "2026-01-01",
            "dagster/asset_partition_range_end": "2026-01-03",
        },
    )
    assert ranged.success  # type: ignore[attr-defined]
    days = metadata_of(ranged, partitions=3)["days"]
    assert [(day["day"], day["windows"], day["requeued"]) for day in days] == [  # type: ignore[union-attr]
        ("2026-01-01", 24, 24),
        ("2026-01-02", 24, 0),
        ("2026-01-03", 24, 24),
    ]
    assert statuses(config) == {"COMPLETED": 72}
    for where in NY_DAY.values():
        assert target_count(config, where) == 24 * 4
    assert instance.get_materialized_partitions(dg.AssetKey("orders")) == set(NY_DAY)  # type: ignore[attr-defined]


def test_a_day_with_failed_batches_fails_its_partition(
    pipeline: Callable[..., Path], instance: object
) -> None:
    config = pipeline(days=2, timezone="America/New_York", broken=True)
    example = load_example(config)
    result = materialize(example, instance, partition_key="2026-01-01", raise_on_error=False)
    assert not result.success  # type: ignore[attr-defined]
    failure = next(
        event
        for event in result.all_events  # type: ignore[attr-defined]
        if event.event_type_value == "STEP_FAILURE"
    )
    message = str(failure.event_specific_data.error.message)
    assert "2026-01-01: not complete (FAILED 24)" in message
    assert instance.get_materialized_partitions(dg.AssetKey("orders")) == set()  # type: ignore[attr-defined]
    assert statuses(config) == {"FAILED": 24, "PENDING": 24}


def test_dagster_dev_from_the_docs_serves_the_definitions(tmp_path: Path) -> None:
    # The line of docs/orchestrators.md, as written, with this test's config, the checkout's
    # example and a free port: `pip install "pipestate[dagster]"` must be enough for it.
    import json
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from orchestrated import write_pipeline

    doc = (Path(__file__).parents[2] / "docs" / "orchestrators.md").read_text(encoding="utf-8")
    line = next(row for row in doc.splitlines() if "dagster dev -f" in row)
    config = write_pipeline(tmp_path / "pipeline", days=1, timezone="America/New_York")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = line.replace("/opt/pipelines/orders/pipestate.toml", str(config)).replace(
        "docs/examples/", f"{EXAMPLE.parent}/"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPESTATE_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["DAGSTER_HOME"] = str(tmp_path / "dagster-home")
    (tmp_path / "dagster-home").mkdir()
    log = tmp_path / "dagster-dev.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            ["bash", "-c", f"{command} -h 127.0.0.1 -p {port}"],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline, info = time.monotonic() + 240, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as reply:
                    info = json.loads(reply.read())
                    break
            except OSError:
                time.sleep(2)
        assert info is not None, (
            server.stderr.read().decode()[-3000:] if server.poll() is not None else "no reply"
        )
        assert "dagster_webserver_version" in info
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
