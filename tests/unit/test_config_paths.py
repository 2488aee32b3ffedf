"""Relative paths in a config file are relative to its folder (contract 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipestate.config import anchor_path, load_config

BASE = Path("/srv/pipelines/orders")


@pytest.mark.parametrize(
    ("value", "anchored"),
    [
        ("sqlite:///state.db", "sqlite:////srv/pipelines/orders/state.db"),
        ("sqlite:///data/state.db", "sqlite:////srv/pipelines/orders/data/state.db"),
        ("sqlite+pysqlite:///state.db", "sqlite+pysqlite:////srv/pipelines/orders/state.db"),
        ("duckdb:///t.duckdb?threads=2", "duckdb:////srv/pipelines/orders/t.duckdb?threads=2"),
        ("stage", "/srv/pipelines/orders/stage"),
        ("./stage", "/srv/pipelines/orders/stage"),
        ("../shared/events/*.ndjson", "/srv/pipelines/orders/../shared/events/*.ndjson"),
        # left alone: absolute paths, memory, URIs and other systems' URLs
        ("sqlite:////var/lib/state.db", "sqlite:////var/lib/state.db"),
        ("sqlite://", "sqlite://"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("duckdb:///:memory:", "duckdb:///:memory:"),
        ("sqlite:///file:state.db?uri=true", "sqlite:///file:state.db?uri=true"),
        ("/var/stage", "/var/stage"),
        ("file:///var/stage", "file:///var/stage"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("postgresql+psycopg://u@db/x", "postgresql+psycopg://u@db/x"),
    ],
)
def test_anchor_path(value: str, anchored: str) -> None:
    assert anchor_path(value, BASE) == anchored


def test_file_paths_follow_the_file_and_env_paths_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "pipestate.toml").write_text(
        '[pipeline]\nname = "p"\nstart = "2026-01-01"\n'
        '[source]\ntype = "files"\npath = "events"\ntime_field = "t"\n'
        '[stage]\ntype = "local"\nurl = "stage"\n',
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    config = load_config("project/pipestate.toml", environ={})
    assert config.state.url == f"sqlite:///{folder / 'pipestate.db'}"  # the default, beside the file
    assert config.source["path"] == str(folder / "events")
    assert config.stage["url"] == str(folder / "stage")
    overridden = load_config("project/pipestate.toml", environ={"PIPESTATE_STATE__URL": "sqlite:///x.db"})
    assert overridden.state.url == f"sqlite:///{tmp_path / 'x.db'}"
    only_env = load_config(
        None, environ={"PIPESTATE_PIPELINE__NAME": "p", "PIPESTATE_PIPELINE__START": "2026-01-01"}
    )
    assert only_env.state.url == f"sqlite:///{tmp_path / 'pipestate.db'}"
