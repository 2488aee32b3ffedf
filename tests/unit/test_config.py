"""Configuration (contract 2): TOML + PIPESTATE_<SECTION>__<KEY> env, validated once, naming the key."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipestate.cli.examples import EXAMPLE_CONFIG
from pipestate.config import Config, load_config, parse_duration
from pipestate.errors import ConfigError
from pipestate.windows import DAY

BASE = {"pipeline": {"name": "orders", "start": "2026-01-01"}}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipestate.toml"
    path.write_text(text)
    return path


def test_minimal_config_has_the_documented_defaults():
    config = Config.from_dict(BASE)
    assert config.pipeline.timezone == "UTC" and config.pipeline.granularity == "1h"
    assert config.pipeline.end_utc is None and config.pipeline.lag == timedelta(0)
    assert config.state.url == "sqlite:///pipestate.db" and config.state.table == "pipeline_state"
    assert config.pipeline.start_utc == datetime(2026, 1, 1, tzinfo=UTC)


def test_example_config_is_valid(tmp_path):
    config = load_config(write(tmp_path, EXAMPLE_CONFIG), environ={})
    assert config.pipeline.name == "orders" and config.pipeline.lag == timedelta(minutes=15)


def test_env_overrides_every_key(tmp_path):
    path = write(tmp_path, '[pipeline]\nname = "orders"\nstart = "2026-01-01"\n')
    config = load_config(
        path,
        environ={
            "PIPESTATE_STATE__URL": "postgresql+psycopg://x@h/db",
            "PIPESTATE_PIPELINE__GRANULARITY": "1d",
            "PIPESTATE_PIPELINE__TIMEZONE": "Europe/Paris",
        },
    )
    assert config.state.url == "postgresql+psycopg://x@h/db"
    assert config.pipeline.step == DAY
    assert config.pipeline.start_utc == datetime(2025, 12, 31, 23, tzinfo=UTC)


def test_pipestate_config_env_names_the_file(tmp_path):
    path = write(tmp_path, '[pipeline]\nname = "from-env"\nstart = "2026-01-01"\n')
    assert load_config(None, environ={"PIPESTATE_CONFIG": str(path)}).pipeline.name == "from-env"


def test_toml_native_dates_are_accepted(tmp_path):
    path = write(tmp_path, '[pipeline]\nname = "o"\nstart = 2026-01-01\nend = 2026-01-02T06:00:00\n')
    config = load_config(path, environ={})
    assert config.pipeline.end_utc == datetime(2026, 1, 2, 6, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[pipeline]\nname = "o"\nstart = "2026-01-01"\ncolour = "red"\n', "colour"),
        ('[pipeline]\nname = "o"\nstart = "2026-01-01"\n[stat]\nurl = "x"\n', "stat"),
        ('[pipeline]\nname = "o"\nstart = "2026-01-01"\n[state]\ntabel = "x"\n', "tabel"),
    ],
)
def test_unknown_keys_are_errors_naming_them(tmp_path, text, named):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert named in message and "unknown" in message and str(path) in message
    assert "\n" not in message


def test_unknown_env_key_is_an_error():
    with pytest.raises(ConfigError, match="gran"):
        load_config("/nonexistent.toml", environ={**_env(BASE), "PIPESTATE_PIPELINE__GRAN": "1h"})


def _env(data):
    return {
        f"PIPESTATE_{s.upper()}__{k.upper()}": str(v) for s, values in data.items() for k, v in values.items()
    }


@pytest.mark.parametrize(
    ("pipeline", "named"),
    [
        ({"name": "bad name"}, "name"),
        ({"name": None}, "name"),
        ({"start": None}, "start"),
        ({"timezone": "Mars/Base"}, "timezone"),
        ({"granularity": "0m"}, "granularity"),
        ({"granularity": "25h"}, "granularity"),
        ({"granularity": "2d"}, "granularity"),
        ({"granularity": "15s"}, "granularity"),
        ({"lag": "15"}, "lag"),
        ({"start": "2026-13-01"}, "start"),
        ({"end": "2025-12-01"}, "end"),
        ({"timezone": "America/New_York", "start": "2026-03-08T02:30"}, "start"),
    ],
)
def test_bad_values_name_the_key(pipeline, named):
    values = {**BASE["pipeline"], **pipeline}
    values = {k: v for k, v in values.items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        Config.from_dict({"pipeline": values})
    assert named in str(caught.value)


def test_bad_id_function_is_a_config_error():
    with pytest.raises(ConfigError, match="batch_id"):
        Config.from_dict({**BASE, "ids": {"batch_id": "not a path"}})
    from pipestate.manager import PipelineStateManager

    config = Config.from_dict({**BASE, "ids": {"batch_id": "no_such_module_xyz:make"}})
    with pytest.raises(ConfigError, match="batch_id"):
        PipelineStateManager(config)


def test_missing_file_without_env_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", environ={})


def test_invalid_toml_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="TOML"):
        load_config(write(tmp_path, "[pipeline\n"), environ={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0s", timedelta(0)),
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["15", "1d", "-1m", "m", "1.5h"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_local_start_and_end_in_a_dst_zone():
    config = Config.from_dict(
        {
            "pipeline": {
                "name": "o",
                "timezone": "America/New_York",
                "start": "2026-03-08",
                "end": "2026-03-09T12:00",
            }
        }
    )
    assert config.pipeline.start_utc == datetime(2026, 3, 8, 5, tzinfo=UTC)
    assert config.pipeline.end_utc == datetime(2026, 3, 9, 16, tzinfo=UTC)


def test_config_hash_depends_on_what_decides_windows():
    a = Config.from_dict(BASE)
    b = Config.from_dict({**BASE, "state": {"url": "sqlite:///other.db"}})
    c = Config.from_dict({"pipeline": {**BASE["pipeline"], "granularity": "15m"}})
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_durations_zone_and_step_are_typed_and_parsed_once(monkeypatch: pytest.MonkeyPatch):
    import pipestate.config as config_module

    config = Config.from_dict(
        {
            "pipeline": {"name": "orders", "start": "2026-01-01", "timezone": "Europe/Berlin", "lag": "15m"},
            "concurrency": {"lease": "2m", "retry_backoff": "30s", "lock_timeout": "5s"},
        }
    )
    concurrency, pipeline = config.concurrency, config.pipeline
    assert (concurrency.lease, concurrency.retry_backoff, concurrency.lock_timeout) == (
        timedelta(minutes=2),
        timedelta(seconds=30),
        timedelta(seconds=5),
    )
    assert pipeline.tz.key == "Europe/Berlin" and pipeline.step == timedelta(hours=1)
    assert pipeline.lag == timedelta(minutes=15)

    assert pickle.loads(pickle.dumps(config)).concurrency.lease == timedelta(minutes=2)

    def parse_again(text: str) -> timedelta:
        raise AssertionError(f"{text!r} parsed again")

    monkeypatch.setattr(config_module, "parse_duration", parse_again)
    assert concurrency.lease == timedelta(minutes=2)  # the value read before, not parsed again
    assert pipeline.lag == timedelta(minutes=15)
    assert str(config.concurrency.lease) == "2m"  # the text stays as written (config_hash, messages)
    assert config.model_dump()["concurrency"]["lease"] == "2m"
