"""Dagster definitions for a pipestate pipeline (docs/orchestrators.md; the tests load this file).

One asset, partitioned by local day in the pipeline's zone: materializing a
partition runs that day's windows through pipestate (populate, then the day's
batches; a re-materialization requeues them and reads the source again). A
daily schedule materializes yesterday; backfills run many days.

    PIPESTATE_CONFIG=/path/to/pipestate.toml dagster dev -f dagster_defs.py
"""

import os

import dagster as dg

from pipestate.integrations.dagster import PipestateResource, pipestate_daily_asset

CONFIG = os.environ.get("PIPESTATE_CONFIG", "/opt/pipelines/orders/pipestate.toml")

orders = pipestate_daily_asset(CONFIG, group_name="pipestate")

defs = dg.Definitions(
    assets=[orders],
    resources={"pipestate": PipestateResource(config_path=CONFIG, workers=1)},
    schedules=[
        dg.build_schedule_from_partitioned_job(
            dg.define_asset_job("orders_daily", selection=[orders]), hour_of_day=0, minute_of_hour=30
        )
    ],
)
