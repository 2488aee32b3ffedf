"""`pipestate mirror`: the local PostgreSQL (and SQLite, DuckDB) into fakesnow, a STAND-IN.

What fakesnow 0.12.1 runs here for real: PUT of the Parquet file to a table stage, COPY INTO
with MATCH_BY_COLUMN_NAME, BEGIN / UPDATE ... FROM / INSERT ... SELECT / DELETE / COMMIT /
ROLLBACK, information_schema, MD5 and DATE_PART in the digest. What it does not prove: real
Snowflake's locking, TO_NUMBER(hex) (fakesnow takes the '0x' cast instead, probed at run time)
and Parquet type mapping; `test_real_snowflake_mirror` runs against a real account when
PIPESTATE_TEST_SNOWFLAKE_URL (snowflake://user:password@account/database/schema?warehouse=...)
is set.

After every step the copy is compared with the source by `--verify` (count and hash sum of
each row's canonical text, per side) AND by reading both sides row by row here.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import support
from sqlalchemy import create_engine, select, text

from pipestate.config import Config
from pipestate.errors import StoreBusyError
from pipestate.manager import PipelineStateManager
from pipestate.ops.mirror import mirror, mirror_target
from pipestate.statuses import Status
from pipestate.store import mirror as source_side

pytestmark = [
    pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result makes an extra copy:UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    # The command run in this process (`_in_process`) leaves its engine's connections to the
    # process's exit, as the real command does; their collection is not under test here.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

FAKE_URL = "snowflake://mirror_user:s3cr3t-Pw@acme/analytics/raw"
HELPER = Path(__file__).with_name("fakesnow_cli.py")


@pytest.fixture
def fakesnow_patch() -> Iterator[None]:
    fakesnow = pytest.importorskip("fakesnow")
    pytest.importorskip("snowflake.connector")
    with fakesnow.patch():
        yield


@pytest.fixture
def pg_table() -> Iterator[str]:
    problem = support.pg_reachable()
    if problem:
        pytest.skip(problem)
    table = support.unique_table()
    yield table
    support.drop_pg_tables(support.PG_URL, table)


def _config(url: str, table: str, **extra: Any) -> Config:
    data = support.config_dict(url, table)
    data["mirror"] = {"url": FAKE_URL}
    data["concurrency"] = {"retry_backoff": "0s", "max_retries": 2, "lease": "10m"}
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return Config.from_dict(data)


_MADE: list[PipelineStateManager] = []


@pytest.fixture(autouse=True)
def _close_managers() -> Iterator[None]:
    yield
    while _MADE:
        _MADE.pop().close()


def _manager(url: str, table: str, **extra: Any) -> PipelineStateManager:
    return _made(PipelineStateManager(_config(url, table, **extra)))


def _made(manager: PipelineStateManager) -> PipelineStateManager:
    _MADE.append(manager)
    return manager


def _snowflake(sql: str) -> list[tuple[Any, ...]]:
    import snowflake.connector

    with snowflake.connector.connect(database="analytics", schema="raw") as conn:
        cursor = conn.cursor()
        cursor.execute(sql)
        return list(cursor.fetchall())


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    if isinstance(value, float):
        return round(value, 6)
    if hasattr(value, "is_integer") or type(value).__name__ == "Decimal":
        return int(value)
    return value


def assert_copy_equal(manager: PipelineStateManager, pipeline: str | None = "orders") -> None:
    """The copy, read row by row, equals the source (every column, every event)."""
    store = manager.store
    for table, key in ((store.tables.state, "batch_id"), (store.tables.events, "event_id")):
        with store.engine.connect() as conn:
            stmt = select(table)
            if pipeline is not None:
                stmt = stmt.where(table.c.pipeline_name == pipeline)
            mine = {str(row[key]): row for row in (dict(r._mapping) for r in conn.execute(stmt))}
        where = "" if pipeline is None else f" WHERE pipeline_name = '{pipeline}'"
        target = f"analytics.raw.{table.name}"
        columns = [column.name for column in table.columns]
        rows = _snowflake(f"SELECT {', '.join(columns)} FROM {target}{where}")
        theirs = {str(row[columns.index(key)]): dict(zip(columns, row, strict=True)) for row in rows}
        assert set(theirs) == set(mine), table.name
        for k, row in mine.items():
            for column in columns:
                assert _canonical(theirs[k][column]) == _canonical(row[column]), (table.name, k, column)


def _ids(manager: PipelineStateManager) -> list[str]:
    state = manager.store.tables.state
    with manager.store.engine.connect() as conn:
        picked = select(state.c.batch_id).where(state.c.pipeline_name == "orders")
        return [str(b) for b in conn.execute(picked).scalars()]


def _last_error(state: str, ids: list[str]) -> dict[str, Any]:
    listed = ", ".join(f"'{b}'" for b in ids[:2])
    rows = _snowflake(f"SELECT batch_id, last_error FROM analytics.raw.{state} WHERE batch_id IN ({listed})")
    return {str(b): e for b, e in rows}


def _mirror_verified(manager: PipelineStateManager, **kwargs: Any) -> Any:
    result = mirror(manager.context, verify=True, **kwargs)
    assert result.verify is not None and result.verify["equal"], result.verify
    return result


def _work(manager: PipelineStateManager, worker: str, rounds: int, fail_every: int) -> None:
    """Claim and finish `rounds` batches; every `fail_every`-th fails for good (until a requeue)."""
    for n in range(rounds):
        batch = manager.claim(worker)
        if batch is None:
            return
        if n % fail_every == 0:
            manager.fail(batch.batch_id, worker, "injected failure", step="source", retryable=False)
        else:
            manager.complete(
                batch.batch_id,
                worker,
                values={
                    "source_record_count": n,
                    "batch_metadata": json.dumps({"n": n, "note": 'ünïcode, "quotes", new\nline'}),
                },
            )


@pytest.mark.postgres
def test_runs_failures_requeues_and_quarantines_each_mirrored_exactly(fakesnow_patch, pg_table) -> None:
    manager = _manager(support.PG_URL, pg_table)
    manager.populate_pipeline_batches()
    first = _mirror_verified(manager)
    assert first.full and first.rows == 24 and first.events == 24
    assert_copy_equal(manager)

    _work(manager, "w1", 10, fail_every=3)
    second = _mirror_verified(manager)
    # only what changed, and what transactions running at the last read wrote (others' too:
    # the PostgreSQL these tests share has them), never the whole table again
    assert not second.full and second.rows >= 1
    assert_copy_equal(manager)

    # A row changed twice between two mirrors arrives in its latest form.
    failed = [b for b, s in manager.statuses(_ids(manager)).items() if s == Status.FAILED]
    manager.requeue(failed)
    _work(manager, "w2", 30, fail_every=7)
    manager.quarantine([failed[0]], reason="bad data upstream", force=True)
    manager.populate_pipeline_batches()  # fills the quarantined window's gap
    third = _mirror_verified(manager)
    assert not third.full
    assert_copy_equal(manager)

    nothing = _mirror_verified(manager)
    if (nothing.rows, nothing.events) == (0, 0):  # no transaction was running at the last read
        # read the mark, BEGIN, move the mark, COMMIT (+ 2 digests)
        assert nothing.statements <= 6


@pytest.mark.postgres
def test_a_slow_transaction_committing_after_a_faster_later_one_is_not_missed(
    fakesnow_patch, pg_table
) -> None:
    """T1 writes first (earlier updated_at, lower event id) but commits after T2 and after a
    mirror that saw T2: the next mirror still copies T1's row and event."""
    manager = _manager(support.PG_URL, pg_table)
    manager.populate_pipeline_batches()
    _mirror_verified(manager)
    state = manager.store.tables.state.name
    events = manager.store.tables.events.name
    ids = sorted(_ids(manager))
    engine = create_engine(support.PG_URL)
    slow = engine.connect()
    slow_tx = slow.begin()
    slow.execute(
        text(
            f"UPDATE {state} SET last_error = 'slow', updated_at = now() - interval '1 hour' "
            "WHERE batch_id = :b"
        ),
        {"b": ids[0]},
    )
    slow.execute(
        text(
            f"INSERT INTO {events} (batch_id, pipeline_name, event_type, event_time) "
            "VALUES (:b, 'orders', 'NOTE', now() - interval '1 hour')"
        ),
        {"b": ids[0]},
    )
    with engine.begin() as fast:  # later, and committed first
        fast.execute(
            text(f"UPDATE {state} SET last_error = 'fast', updated_at = now() WHERE batch_id = :b"),
            {"b": ids[1]},
        )
        fast.execute(
            text(
                f"INSERT INTO {events} (batch_id, pipeline_name, event_type, event_time) "
                "VALUES (:b, 'orders', 'NOTE', now())"
            ),
            {"b": ids[1]},
        )
    while_open = _mirror_verified(manager)  # sees the fast one only (the slow one is invisible)
    assert while_open.rows >= 1 and while_open.events >= 1
    assert _last_error(state, ids) == {ids[0]: None, ids[1]: "fast"}
    slow_tx.commit()
    slow.close()
    after = _mirror_verified(manager)
    assert after.rows >= 1 and after.events >= 1  # the slow one, not missed
    assert_copy_equal(manager)
    assert _last_error(state, ids) == {ids[0]: "slow", ids[1]: "fast"}
    engine.dispose()


@pytest.mark.postgres
def test_init_db_adding_a_column_reaches_the_copy(fakesnow_patch, pg_table) -> None:
    manager = _manager(support.PG_URL, pg_table)
    manager.populate_pipeline_batches()
    with manager.store.engine.begin() as conn:  # an older table: one of our columns missing
        conn.execute(text(f"ALTER TABLE {pg_table} DROP COLUMN last_error_kind"))
    manager.close()
    manager = _manager(support.PG_URL, pg_table)
    _mirror_verified(manager)
    with manager.store.engine.begin() as conn:  # another tool's column, with a default for old rows
        conn.execute(text(f"ALTER TABLE {pg_table} ADD COLUMN team text DEFAULT 'analytics'"))
    assert "added column last_error_kind" in manager.init_db()
    manager.close()
    manager = _manager(support.PG_URL, pg_table)
    _work(manager, "w", 3, fail_every=2)
    again = _mirror_verified(manager)
    assert again.full  # the columns changed: everything again, so old rows carry the new values
    assert any("last_error_kind" in action for action in again.actions)
    assert _snowflake(f"SELECT DISTINCT team FROM analytics.raw.{pg_table}") == [("analytics",)]
    assert_copy_equal(manager)
    assert not _mirror_verified(manager).full


@pytest.mark.postgres
def test_two_mirrors_at_once_one_waits(fakesnow_patch, pg_table) -> None:
    manager = _manager(support.PG_URL, pg_table)
    manager.populate_pipeline_batches()
    _mirror_verified(manager)
    _work(manager, "w", 8, fail_every=3)
    results: list[Any] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(mirror(_made(PipelineStateManager(manager.config)).context))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    _mirror_verified(manager)
    assert_copy_equal(manager)
    # the first mirror, the two at once, the last
    assert _snowflake(f"SELECT seq FROM analytics.raw.{pg_table}_mirror")[0][0] == 4


@pytest.mark.postgres
def test_a_mirror_refuses_when_another_holds_the_lock_too_long(fakesnow_patch, pg_table) -> None:
    manager = _manager(support.PG_URL, pg_table, concurrency={"lock_timeout": "1s"})
    manager.populate_pipeline_batches()
    holder = _made(PipelineStateManager(manager.config)).store
    with source_side.mirror_lock(holder), pytest.raises(StoreBusyError, match="another mirror"):
        mirror(manager.context)


def test_a_stale_mark_writes_nothing(fakesnow_patch, tmp_path: Path, table_name: str) -> None:
    """Two mirrors from places no lock joins: the one whose mark moved under it writes nothing."""
    manager = _manager(f"sqlite:///{tmp_path / 'state.db'}", table_name)
    manager.populate_pipeline_batches()
    _mirror_verified(manager)
    target = mirror_target(manager.context)
    with target.connect() as cursor:
        stale = target.read_mark(cursor, "pipeline:orders")
    _mirror_verified(manager)  # moves the mark on
    assert stale is not None
    with target.connect() as cursor:
        from pyarrow import table as arrow_table

        wrote = target.write(
            cursor,
            scope_filter="orders",
            expected=stale,
            new=stale,
            state=arrow_table({"batch_id": ["x"]}),
            events=arrow_table({"event_id": [1]}),
            state_columns=[("batch_id", "text")],
            event_columns=[("event_id", "int")],
            full=True,
        )
    assert not wrote
    assert_copy_equal(manager)


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("duckdb", marks=pytest.mark.duckdb)])
def test_embedded_state_tables_are_mirrored_whole_and_exactly(
    fakesnow_patch, tmp_path, table_name, kind
) -> None:
    if kind == "duckdb":
        pytest.importorskip("duckdb_engine")
    url = f"{kind}:///{tmp_path / ('state.' + ('db' if kind == 'sqlite' else 'duckdb'))}"
    manager = _manager(url, table_name)
    manager.populate_pipeline_batches()
    _work(manager, "w", 6, fail_every=2)
    first = _mirror_verified(manager)
    assert first.full
    assert_copy_equal(manager)
    _work(manager, "w", 6, fail_every=4)
    with manager.store.engine.begin() as conn:  # a row removed by hand leaves the copy too
        conn.execute(
            text(f"DELETE FROM {table_name} WHERE batch_id = (SELECT min(batch_id) FROM {table_name})")
        )
    again = _mirror_verified(manager)
    assert again.full and again.rows == 23
    assert_copy_equal(manager)
    manager.close()


@pytest.mark.postgres
def test_all_pipelines_and_a_difference_found(fakesnow_patch, pg_table) -> None:
    orders = _manager(support.PG_URL, pg_table)
    orders.populate_pipeline_batches()
    data = support.config_dict(support.PG_URL, pg_table, name="refunds")
    data["mirror"] = {"url": FAKE_URL}
    refunds = _made(PipelineStateManager(Config.from_dict(data)))
    refunds.populate_pipeline_batches()
    everything = _mirror_verified(orders, all_pipelines=True)
    assert everything.scope == "*" and everything.rows == 48
    assert_copy_equal(orders, pipeline=None)
    victim = sorted(_ids(orders))[3]
    _snowflake(f"UPDATE analytics.raw.{pg_table} SET retry_count = 99 WHERE batch_id = '{victim}'")
    _snowflake(f"DELETE FROM analytics.raw.{pg_table}_events WHERE batch_id = '{victim}'")
    found = mirror(orders.context, all_pipelines=True, verify=True).verify
    assert found is not None and not found["equal"]
    assert found["state"]["different"] == [victim] and found["state"]["counts"]["different"] == 1
    assert found["events"]["counts"]["missing"] == 1


@pytest.mark.postgres
def test_metrics_say_how_fresh_the_copy_is(fakesnow_patch, pg_table) -> None:
    from pipestate.ops import observe
    from pipestate.show.metrics import metrics_json, metrics_text

    manager = _manager(support.PG_URL, pg_table)
    manager.populate_pipeline_batches()
    assert observe.alert_data(manager.context)["mirrors"] == []
    mirror(manager.context)
    figures = observe.alert_data(manager.context)
    # at most: the rows of transactions running at the mirror's read count too
    [(scope, before)] = [(m["scope"], m["rows_behind"]) for m in figures["mirrors"]]
    assert scope == "pipeline:orders"
    _work(manager, "w", 3, fail_every=5)
    figures = observe.alert_data(manager.context)
    behind = figures["mirrors"][0]["rows_behind"]
    assert behind >= 3 and behind <= before + 3
    shown = metrics_json("orders", figures)["mirrors"][0]
    assert shown["rows_behind"] == behind and shown["age_seconds"] is not None
    gauge = f'pipestate_mirror_rows_behind{{pipeline="orders",scope="pipeline:orders"}} {float(behind)}'
    assert gauge in metrics_text("orders", figures)


# -- the command line, in processes of their own (fakesnow on files) ---------------------


def _cli(
    db_path: Path, config: Path, *args: str, die_at: str | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(HELPER), str(db_path), *(["--die-at", die_at] if die_at else [])]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    return subprocess.run(
        [*command, *args, "--config", str(config)], capture_output=True, text=True, timeout=300, env=env
    )


def _config_file(tmp_path: Path, table: str, url: str = FAKE_URL) -> Path:
    path = tmp_path / "pipestate.toml"
    path.write_text(
        f'[pipeline]\nname = "orders"\nstart = "2026-01-01"\nend = "2026-01-02"\n'
        f'[state]\nurl = "{support.PG_URL}"\ntable = "{table}"\n'
        f'[concurrency]\nretry_backoff = "0s"\n[mirror]\nurl = "{url}"\n'
    )
    return path


def _in_process(db_path: Path, config: Path, *args: str) -> Any:
    """`pipestate ARGS --json` in this process, on fakesnow's files in `db_path`; its JSON."""
    import fakesnow

    from pipestate.cli import main

    with fakesnow.patch(db_path=str(db_path)):
        code = main([*args, "--config", str(config)])
    gc.collect()  # the command's engine, collected here, under this module's warning filters
    return code


@pytest.mark.postgres
@pytest.mark.slow
def test_a_mirror_killed_mid_copy_or_mid_transaction_leaves_nothing_half_done(
    pg_table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("fakesnow")
    config = _config_file(tmp_path, pg_table)
    snow = tmp_path / "snow"
    snow.mkdir()
    manager = _made(PipelineStateManager(str(config)))
    manager.populate_pipeline_batches()
    assert _in_process(snow, config, "mirror", "--json") == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 24
    for pattern in ("COPY INTO", f"INSERT INTO analytics.raw.{pg_table}_events"):
        _work(manager, f"w-{pattern[:4]}", 4, fail_every=3)
        killed = _cli(snow, config, "mirror", "--json", die_at=pattern)  # SIGKILLed in there
        assert killed.returncode == -9, killed.stderr
        assert _in_process(snow, config, "mirror", "--verify", "--json") == 0
        result = json.loads(capsys.readouterr().out)
        assert result["verify"]["equal"] and result["rows"] >= 4


@pytest.mark.postgres
def test_the_command_keeps_credentials_out_of_json_and_errors(
    pg_table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("fakesnow")
    config = _config_file(tmp_path, pg_table)
    snow = tmp_path / "snow"
    snow.mkdir()
    _made(PipelineStateManager(str(config))).populate_pipeline_batches()
    done = _cli(snow, config, "mirror", "--verify", "--json")  # the real entry point, a process of its own
    assert done.returncode == 0, done.stderr
    assert "s3cr3t-Pw" not in done.stdout + done.stderr
    assert json.loads(done.stdout)["mirror"] == "snowflake://mirror_user:***@acme/analytics/raw"
    assert _in_process(snow, config, "mirror", "--verify") == 0
    shown = capsys.readouterr()
    assert "verify state: equal" in shown.out and "s3cr3t-Pw" not in shown.out + shown.err
    # a URL the connector would refuse: exit 2, naming the option, not the password
    bad = _config_file(tmp_path, pg_table, url=FAKE_URL + "?bogus=1")
    assert _in_process(snow, bad, "mirror") == 2
    refused = capsys.readouterr().err
    assert "bogus" in refused and "s3cr3t-Pw" not in refused
    plain = tmp_path / "plain.toml"
    plain.write_text(config.read_text().split("[mirror]")[0])
    assert _in_process(snow, plain, "mirror") == 2
    assert "[mirror] url" in capsys.readouterr().err
    assert _in_process(snow, plain, "run", "--mirror") == 2  # checked before anything runs


def test_real_snowflake_mirror(tmp_path: Path, table_name: str) -> None:
    url = os.environ.get("PIPESTATE_TEST_SNOWFLAKE_URL")
    if not url:
        pytest.skip(
            "PIPESTATE_TEST_SNOWFLAKE_URL is not set (snowflake://user:password@account/db/schema?...)"
        )
    data = support.config_dict(f"sqlite:///{tmp_path / 'state.db'}", table_name)
    data["mirror"] = {"url": url, "table": table_name}
    manager = _made(PipelineStateManager(Config.from_dict(data)))
    manager.populate_pipeline_batches()
    _work(manager, "w", 5, fail_every=2)
    first = mirror(manager.context, verify=True)
    assert first.verify is not None and first.verify["equal"]
    _work(manager, "w", 5, fail_every=3)
    again = mirror(manager.context, verify=True)
    assert again.verify is not None and again.verify["equal"]
    target = mirror_target(manager.context)
    with target.connect() as cursor:
        for suffix in ("", "_events", "_mirror", "_mirror_stage"):
            cursor.execute(f"DROP TABLE IF EXISTS {target.state_table}{suffix}")


def test_passwords_stay_out_of_url_errors() -> None:
    from pipestate.connectors.snowflake_mirror import SnowflakeMirror, mirror_target_name
    from pipestate.errors import ConfigError
    from pipestate.store.engine import normalize_url

    with pytest.raises(ConfigError) as state_error:
        normalize_url("postgresql//u:s3cr3t-Pw@h/db")
    assert "s3cr3t-Pw" not in str(state_error.value)
    for url in (FAKE_URL + "?token=s3cr3t-Pw", FAKE_URL + "?private_key_file_pwd=s3cr3t-Pw"):
        assert "s3cr3t-Pw" not in mirror_target_name(url)
    with pytest.raises(ConfigError) as mirror_error:
        SnowflakeMirror("snowflake://u:s3cr3t-Pw@acme", None, "t")  # no database
    assert "s3cr3t-Pw" not in str(mirror_error.value)
    with pytest.raises(ConfigError) as config_error:
        Config.from_dict(
            {**support.config_dict("sqlite://", "t"), "mirror": {"url": "postgresql://u:s3cr3t-Pw@h/d"}}
        )
    assert "s3cr3t-Pw" not in str(config_error.value) and "[mirror] url" in str(config_error.value)
