"""Hostile input at the command line: exit 2 with one line naming the key, nothing written."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from test_cli import CONFIG, one_line_error, run


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pipestate.toml").write_text(CONFIG.format(db=tmp_path / "state.db"))
    return tmp_path


def test_a_fifo_as_config_is_exit_2_at_once(tmp_path):
    fifo = tmp_path / "cfg.toml"
    os.mkfifo(fifo)
    result = run("validate", "--config", str(fifo), cwd=tmp_path)  # would block reading
    assert result.returncode == 2 and "not a regular file" in one_line_error(result)


def test_a_config_that_is_not_utf8_is_exit_2(tmp_path):
    path = tmp_path / "pipestate.toml"
    path.write_bytes(b'[pipeline]\nname = "caf\xe9"\nstart = "2026-01-01"\n')
    result = run("populate", cwd=tmp_path)
    assert result.returncode == 2 and "UTF-8" in one_line_error(result)


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"PIPESTATE_PIPELINE__NAME": "orders\n"}, "[pipeline] name"),
        ({"PIPESTATE_PIPELINE__NAME": "-orders"}, "[pipeline] name"),
        ({"PIPESTATE_PIPELINE__NAME": "o" * 129}, "[pipeline] name"),
        ({"PIPESTATE_STATE__TABLE": "pipeline_state\n"}, "[state] table"),
        ({"PIPESTATE_STATE__SCHEMA": "a  b"}, "[state] schema"),
        ({"PIPESTATE_CONCURRENCY__LEASE": "100000000h"}, "[concurrency] lease"),
        ({"PIPESTATE_PIPELINE__LAG": "99999999999h"}, "[pipeline] lag"),
        (
            {"PIPESTATE_PIPELINE__START": "0001-01-01", "PIPESTATE_PIPELINE__TIMEZONE": "Pacific/Kiritimati"},
            "start",
        ),
        ({"PIPESTATE_IDS__BATCH_ID": "builtins:id"}, "[ids] batch_id"),
    ],
)
def test_bad_values_are_exit_2_and_write_nothing(project, env, key):
    result = run("populate", cwd=project, env=env)
    assert result.returncode == 2, result.stderr
    assert key in one_line_error(result)
    assert not (project / "state.db").exists()


def test_init_db_help_names_the_migration(project):
    result = run("init-db", "--help", cwd=project)
    assert result.returncode == 0 and "--migrate-timestamps" in result.stdout


def test_a_newer_schema_version_is_exit_3_for_claims_and_populate(project):
    assert run("populate", cwd=project).returncode == 0
    with sqlite3.connect(project / "state.db") as conn:
        conn.execute("UPDATE pipeline_state_meta SET value = '9' WHERE name = 'schema_version'")
    for args in (("populate",), ("claim", "--worker", "w1")):
        result = run(*args, cwd=project)
        assert result.returncode == 3 and "newer than this pipestate" in one_line_error(result)
    with sqlite3.connect(project / "state.db") as conn:
        assert conn.execute("SELECT count(*) FROM pipeline_state WHERE worker_id IS NOT NULL").fetchone() == (
            0,
        )


def test_a_worker_id_longer_than_its_column_is_exit_2(project):
    assert run("populate", cwd=project).returncode == 0
    result = run("claim", "--worker", "w" * 256, cwd=project)
    assert result.returncode == 2 and "--worker" in one_line_error(result)
