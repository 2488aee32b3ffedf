"""The public API: the names a user needs from `pipestate` itself, imported lazily;
naive datetimes refused at the boundary; library errors that name the argument."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import support

import pipestate
from pipestate.errors import UsageError

PIPESTATE = str(Path(sys.executable).parent / "pipestate")


def test_the_public_names_come_from_the_package() -> None:
    from pipestate import Batch, Config, PipelineStateManager, RunSummary, Status, Worker, run_pipeline
    from pipestate.manager import PipelineStateManager as Deep
    from pipestate.run.worker import Worker as DeepWorker

    assert PipelineStateManager is Deep and Worker is DeepWorker
    assert {Batch, Config, RunSummary, Status, run_pipeline}
    for name in pipestate.__all__:
        assert getattr(pipestate, name) is not None, name
    with pytest.raises(AttributeError):
        pipestate.no_such_name  # noqa: B018


@pytest.mark.parametrize(
    "code",
    ["import pipestate", "import pipestate.cli", "from pipestate import PipestateError, ConfigError"],
)
def test_importing_the_package_or_the_command_loads_no_database_library(code: str) -> None:
    probe = f"{code}; import sys; print(sorted(m for m in ('sqlalchemy', 'pydantic') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_requeue_refuses_a_naive_datetime_naming_the_argument(tmp_path: Path, table_name: str) -> None:
    manager = support.make_manager(f"sqlite:///{tmp_path / 'state.db'}", table_name)
    manager.populate_pipeline_batches()
    with pytest.raises(UsageError, match=r"^start: naive datetime 2026-01-01T00:00:00; give it a time zone"):
        manager.requeue(start=datetime(2026, 1, 1), statuses=("PENDING",))
    with pytest.raises(UsageError, match=r"^end: naive datetime"):
        manager.requeue(start=support.utc(2026, 1, 1), end=datetime(2026, 1, 2), statuses=("PENDING",))
    manager.close()


def test_a_naive_clock_is_refused_naming_it(tmp_path: Path, table_name: str) -> None:
    manager = support.make_manager(f"sqlite:///{tmp_path / 'state.db'}", table_name, now=datetime(2026, 3, 1))
    with pytest.raises(UsageError, match=r"^clock: naive datetime"):
        manager.populate_pipeline_batches()
    manager.close()


def test_library_errors_name_the_argument_the_cli_its_option(tmp_path: Path, table_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    manager = support.make_manager(url, table_name)
    manager.populate_pipeline_batches()
    with pytest.raises(UsageError, match=r"^worker: a worker id is required"):
        manager.claim("")
    with pytest.raises(UsageError, match=r"^statuses: cannot requeue SUPERSEDED"):
        manager.requeue(statuses=("SUPERSEDED",))
    manager.close()
    config = tmp_path / "pipestate.toml"
    config.write_text(
        f'[pipeline]\nname = "orders"\nstart = "2026-01-01"\nend = "2026-01-02"\n'
        f'[state]\nurl = "{url}"\ntable = "{table_name}"\n'
    )
    done = subprocess.run(
        [PIPESTATE, "claim", "--worker", "", "--config", str(config)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "pipestate: error: --worker: a worker id is required"
