"""Config values an attacker (or a typo) gives: names matched whole, bounded durations
and dates, broken plug-ins; each a ConfigError naming the key, before anything is written."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from pipestate.config import Config, load_config, parse_duration
from pipestate.errors import ConfigError
from pipestate.manager import PipelineStateManager

BASE = {"pipeline": {"name": "orders", "start": "2026-01-01"}}


def _with(section: str, **values: object) -> dict:
    data = {key: dict(value) for key, value in BASE.items()}
    data.setdefault(section, {}).update(values)
    return data


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("pipeline", "name", "orders\n"),
        ("pipeline", "name", "-orders"),
        ("pipeline", "name", "x" * 129),
        ("pipeline", "name", ""),
        ("state", "table", "pipeline_state\n"),
        ("state", "table", "t" * 57),
        ("state", "schema", "a  b"),
        ("state", "schema", "public\n"),
        ("state", "schema", 'x"; DROP TABLE y; --'),
        ("state", "schema", "s" * 64),
        ("pipeline", "lag", "99999999999h"),
        ("pipeline", "lag", "367d"),
        ("pipeline", "lag", "8785h"),
        ("concurrency", "lease", "100000000h"),
        ("concurrency", "lease", "25h"),
        ("concurrency", "retry_backoff", "25h"),
        ("concurrency", "lock_timeout", "2h"),
        ("concurrency", "max_retries", 1001),
        ("pipeline", "start", "0001-01-01"),
        ("pipeline", "end", "9999-12-31"),
    ],
)
def test_out_of_range_values_name_the_key(section, key, value):
    with pytest.raises(ConfigError) as caught:
        Config.from_dict(_with(section, **{key: value}))
    message = str(caught.value)
    assert f"[{section}] {key if key != 'schema' else 'schema'}" in message.replace("schema_", "schema")
    assert "\n" not in message


def test_first_and_last_days_work_in_the_farthest_zones():
    for zone in ("Pacific/Kiritimati", "Etc/GMT+12"):
        early = Config.from_dict(_with("pipeline", start="0001-01-02", end="0001-01-03", timezone=zone))
        late = Config.from_dict(_with("pipeline", start="9999-12-29", end="9999-12-30", timezone=zone))
        assert early.pipeline.start_utc < early.pipeline.end_utc  # type: ignore[operator]
        assert late.pipeline.start_utc < late.pipeline.end_utc  # type: ignore[operator]
        for config in (early, late):
            PipelineStateManager(config).close()  # the plug-in probe builds the first window


def test_the_widest_bounds_are_accepted():
    config = Config.from_dict(
        {
            **BASE,
            "concurrency": {"lease": "24h", "retry_backoff": "24h", "max_retries": 1000},
            "state": {"table": "t" * 56, "schema": "s" * 63},
        }
    )
    assert config.concurrency.lease == timedelta(hours=24)
    assert parse_duration("8784h") and Config.from_dict(_with("pipeline", lag="8784h"))


def test_a_huge_duration_is_an_error_not_an_overflow():
    with pytest.raises(ValueError, match="at most"):
        parse_duration("9" * 12 + "h", maximum=parse_duration("24h"))
    with pytest.raises(ValueError):
        parse_duration("9" * 40 + "h")


@pytest.mark.parametrize(
    ("key", "function", "says"),
    [
        ("batch_id", "builtins:id", "int"),
        ("batch_id", "builtins:print", "NoneType"),
        ("batch_id", "support_plugins:boom", "failed"),
        ("batch_id", "support_plugins:empty", "empty"),
        ("source_id", "support_plugins:too_long", "256 characters"),
    ],
)
def test_a_broken_id_function_fails_before_anything_is_written(tmp_path, monkeypatch, key, function, says):
    (tmp_path / "support_plugins.py").write_text(
        "def boom(window):\n    raise RuntimeError('no ids today')\n"
        "def empty(window):\n    return ''\n"
        "def too_long(window):\n    return 'x' * 256\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    url = f"sqlite:///{tmp_path / 'state.db'}"
    config = Config.from_dict({**BASE, "state": {"url": url}, "ids": {key: function}})
    with pytest.raises(ConfigError) as caught:
        PipelineStateManager(config).populate_pipeline_batches()
    assert f"[ids] {key}" in str(caught.value) and says in str(caught.value)
    assert not (tmp_path / "state.db").exists()


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "pipestate.toml"
    path.write_bytes(b'[pipeline]\nname = "orders"\nstart = "2026-01-01"\n# caf\xe9\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path, environ={})


def test_a_fifo_or_a_folder_as_config_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path):
        with pytest.raises(ConfigError, match="not a regular file"):
            load_config(Path(path), environ={})


def test_an_env_name_with_a_final_newline_is_refused(tmp_path):
    path = tmp_path / "pipestate.toml"
    path.write_text('[pipeline]\nname = "orders"\nstart = "2026-01-01"\n')
    with pytest.raises(ConfigError, match=r"\[pipeline\] name"):
        load_config(path, environ={"PIPESTATE_PIPELINE__NAME": "orders\n"})


def test_backoff_doubles_up_to_a_week_without_overflow():
    from datetime import timedelta

    from pipestate.store.claims import MAX_BACKOFF_DELAY, backoff_delay

    assert backoff_delay(timedelta(minutes=1), 3) == timedelta(minutes=4)
    assert backoff_delay(timedelta(hours=24), 1000) == MAX_BACKOFF_DELAY == timedelta(days=7)
