"""Fixtures of the orchestrator tests.

These tests run in their own venvs (`.ci/run` builds one with Airflow, one with
Dagster); in the main venv they are skipped. Run them with
`python -m pytest tests/orchestrators --confcutdir tests/orchestrators`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from orchestrated import write_pipeline


@pytest.fixture
def pipeline(tmp_path: Path) -> Callable[..., Path]:
    """Writes a pipeline under tmp_path/pipeline; returns its config file."""
    return lambda **kwargs: write_pipeline(tmp_path / "pipeline", **kwargs)
