"""The Airflow integration against the real Airflow 3: the example DAG through `dag.test()`.

Each DAG run happens in a subprocess (`python airflow_dag.py`, as docs/orchestrators.md
says to try it), with its own AIRFLOW_HOME and SQLite metadata database.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("airflow.sdk", reason="Airflow 3 is installed in the orchestrator venv only")

from orchestrated import statuses, target_count, write_pipeline  # noqa: E402

from pipestate.integrations import airflow as pipestate_airflow  # noqa: E402

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "airflow_dag.py"


@pytest.fixture
def airflow_home(tmp_path: Path) -> dict[str, str]:
    """A fresh AIRFLOW_HOME with a migrated SQLite metadata DB and the example DAG in its folder."""
    home = tmp_path / "airflow"
    (home / "dags").mkdir(parents=True)
    shutil.copy(EXAMPLE, home / "dags" / "airflow_dag.py")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True
    )
    return env


def run_example(env: dict[str, str], config: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    values = {"PIPESTATE_CONFIG": str(config), "PIPESTATE_LOGICAL_DATE": "2026-01-03T00:30", **settings}
    dag_file = Path(env["AIRFLOW__CORE__DAGS_FOLDER"]) / "airflow_dag.py"
    # From another folder, as a scheduler would: the config must not depend on the cwd.
    return subprocess.run(
        [sys.executable, str(dag_file)],
        env={**env, **values},
        cwd=env["AIRFLOW_HOME"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def metadata(env: dict[str, str], sql: str) -> list[tuple]:
    path = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def task_states(env: dict[str, str]) -> dict[tuple[str, int], str]:
    rows = metadata(env, "SELECT task_id, map_index, state FROM task_instance")
    return {(task, index): state for task, index, state in rows}


def asset_events(env: dict[str, str]) -> list[dict]:
    rows = metadata(env, "SELECT a.uri, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id")
    return [{"uri": uri, **json.loads(extra)} for uri, extra in rows]


def test_example_dag_runs_every_window_with_mapped_workers_and_announces_the_day(
    airflow_home: dict[str, str], pipeline: Callable[..., Path]
) -> None:
    config = pipeline(days=2)
    done = run_example(airflow_home, config, PIPESTATE_WORKERS="3", PIPESTATE_BATCHES="20")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    states = task_states(airflow_home)
    # Three mapped copies of `run` shared the 48 windows (20 + 20 + 8).
    assert {index for (task, index) in states if task == "run"} == {0, 1, 2}
    assert set(states.values()) == {"success"}
    assert statuses(config) == {"COMPLETED": 48}
    assert target_count(config) == 48 * 4
    assert asset_events(airflow_home) == [
        {
            "uri": "pipestate://orders/complete-day",
            "pipeline": "orders",
            "day": "2026-01-02",
            "start": "2026-01-02T00:00:00+00:00",
            "end": "2026-01-03T00:00:00+00:00",
            "windows": 24,
        }
    ]


def test_failed_batches_fail_the_run_tasks_and_no_day_is_announced(
    airflow_home: dict[str, str], pipeline: Callable[..., Path]
) -> None:
    config = pipeline(days=2, broken=True)
    done = run_example(
        airflow_home, config, PIPESTATE_WORKERS="2", PIPESTATE_BATCHES="100", PIPESTATE_RETRIES="0"
    )
    assert done.returncode == 1
    states = task_states(airflow_home)
    assert states[("populate", -1)] == "success"
    # The copy that ran first failed every batch for good (max_retries = 1); the other found none left.
    assert sorted((states[("run", 0)], states[("run", 1)])) == ["failed", "success"]
    assert states[("validate", -1)] == "upstream_failed"
    assert states[("complete_day", -1)] == "upstream_failed"
    assert "exited 5 (batches of the run ended FAILED or lost their lease)" in done.stdout + done.stderr
    assert asset_events(airflow_home) == []
    assert statuses(config) == {"FAILED": 48}


def test_an_unfinished_day_skips_the_asset_update(
    airflow_home: dict[str, str], pipeline: Callable[..., Path]
) -> None:
    config = pipeline(days=2)
    # One copy, ten batches: day 2026-01-02 is not done, so there is no asset event.
    done = run_example(airflow_home, config, PIPESTATE_WORKERS="1", PIPESTATE_BATCHES="10")
    assert done.returncode == 0, done.stdout[-3000:]
    states = task_states(airflow_home)
    assert states[("run", 0)] == "success"
    assert states[("validate", -1)] == "success"
    assert states[("complete_day", -1)] == "skipped"
    assert asset_events(airflow_home) == []
    assert statuses(config) == {"COMPLETED": 10, "PENDING": 38}


def test_command_tasks_fail_exactly_when_the_exit_code_says(
    pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    config = pipeline(days=1)
    # validate on a table that does not exist yet: exit 1, no retry can help.
    with pytest.raises(pipestate_airflow.PipestateCommandRefused) as refused:
        pipestate_airflow.validate(config)
    assert refused.value.exit_code == 1
    assert not (config.parent / "state.db").exists()  # validate created nothing
    assert pipestate_airflow.populate(config)["created"]
    assert pipestate_airflow.validate(config)["ok"] is True
    # A bad config: exit 2, and the task fails without retrying.
    bad = tmp_path / "bad.toml"
    bad.write_text('[pipeline]\nname = "x"\nstart = "2026-01-01"\nspeed = 3\n', encoding="utf-8")
    with pytest.raises(pipestate_airflow.PipestateCommandRefused) as refused:
        pipestate_airflow.populate(bad)
    assert refused.value.exit_code == 2 and "[pipeline] speed: unknown key" in str(refused.value)
    from airflow.sdk.exceptions import AirflowFailException

    assert isinstance(refused.value, AirflowFailException)
    # Every batch fails: exit 5, a failure the task's retries apply to.
    broken_config = write_pipeline(tmp_path / "broken", days=1, broken=True)
    with pytest.raises(pipestate_airflow.PipestateCommandFailed) as failed:
        pipestate_airflow.run_batches(broken_config, limit=3)
    assert failed.value.exit_code == 5
    assert failed.value.output is not None and len(failed.value.output["failed_batches"]) == 3
    assert not isinstance(failed.value, AirflowFailException)


def test_the_docs_try_it_lines_work_on_a_fresh_machine(pipeline: Callable[..., Path], tmp_path: Path) -> None:
    # docs/orchestrators.md's block, as written: only the config path is this test's, and the
    # example's path is the checkout's (the lines run from a scratch folder, a fresh AIRFLOW_HOME).
    doc = (Path(__file__).parents[2] / "docs" / "orchestrators.md").read_text(encoding="utf-8")
    block = doc.split("Try it without a scheduler", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    config = pipeline(days=2, timezone="America/New_York")  # the DAG takes the zone from here
    script = block.replace("/opt/pipelines/orders/pipestate.toml", str(config)).replace(
        "docs/examples/", f"{EXAMPLE.parent}/"
    )
    scratch = tmp_path / "fresh"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPESTATE_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"  # faster; the lines work either way
    done = subprocess.run(
        ["bash", "-e", "-c", script], cwd=scratch, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (scratch / "airflow-home" / "dags" / "airflow_dag.py").exists()
    assert statuses(config).get("COMPLETED", 0) > 0
