"""Orchestrator integrations: Airflow (`pipestate[airflow]`) and Dagster (`pipestate[dagster]`).

Each lives in its own module and imports its orchestrator at the top, so only
a caller who imports it needs it installed; `days` is what both share.
"""
