"""An Airflow 3 DAG for a pipestate pipeline (docs/orchestrators.md; the tests run this file).

Every day, shortly after local midnight in the pipeline's zone:

    populate -> run (mapped: WORKERS copies, each up to BATCHES batches) -> validate -> complete_day

`run` is expanded with dynamic task mapping, so a Celery or Kubernetes
executor spreads the copies over many machines; they share the state table,
so each claims different windows. `complete_day` updates the pipeline's day
Asset only when yesterday's windows are all COMPLETED: a DAG scheduled on
`day_asset("orders")` runs on complete days only.

Try it without a scheduler: `PIPESTATE_CONFIG=/path/to/pipestate.toml python airflow_dag.py`.
"""

import os
import sys

import pendulum
from airflow.sdk import DAG, task

from pipestate import load_config
from pipestate.integrations import airflow as pipestate_airflow

CONFIG = os.environ.get("PIPESTATE_CONFIG", "/opt/pipelines/orders/pipestate.toml")
# The name and the zone come from the pipeline's config, so the DAG's local midnight is the
# pipeline's: a zone repeated here could drift from it (and schedule in UTC when forgotten).
_pipeline = load_config(CONFIG).pipeline
PIPELINE = _pipeline.name
TIMEZONE = _pipeline.timezone
WORKERS = int(os.environ.get("PIPESTATE_WORKERS", "3"))  # mapped copies of the run task
BATCHES = int(os.environ.get("PIPESTATE_BATCHES", "100"))  # batches per copy and DAG run
RETRIES = int(os.environ.get("PIPESTATE_RETRIES", "2"))  # for exit codes 3, 4 and 5 (1 and 2 never retry)

with DAG(
    dag_id=f"pipestate_{PIPELINE}",
    schedule="30 0 * * *",  # 00:30 local: yesterday's last window is due (lag included)
    start_date=pendulum.datetime(2026, 1, 1, tz=TIMEZONE),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": RETRIES, "retry_delay": pendulum.duration(minutes=5)},
    tags=["pipestate"],
) as dag:
    populate = pipestate_airflow.PopulateOperator(task_id="populate", config=CONFIG)

    @task
    def run(share: int) -> dict:
        # Fails (exit 5) when a batch of this share ended FAILED or lost its lease.
        return pipestate_airflow.run_batches(CONFIG, limit=BATCHES, worker=f"{share + 1}/{WORKERS}")

    validate = pipestate_airflow.ValidateOperator(task_id="validate", config=CONFIG, retries=0)
    complete_day = pipestate_airflow.CompleteDayOperator(
        task_id="complete_day",
        config=CONFIG,
        pipeline=PIPELINE,
        day=os.environ.get("PIPESTATE_DAY"),  # default: the local day before the run's
    )

    populate >> run.expand(share=list(range(WORKERS))) >> validate >> complete_day


if __name__ == "__main__":
    when = os.environ.get("PIPESTATE_LOGICAL_DATE")  # e.g. 2026-01-03T00:30; default now
    dag_run = dag.test(logical_date=pendulum.parse(when, tz=TIMEZONE) if when else None)
    sys.exit(0 if dag_run.state == "success" else 1)
