"""The example configuration `pipestate init` writes."""

EXAMPLE_CONFIG = """\
# pipestate configuration. Every key can be overridden from the environment as
# PIPESTATE_<SECTION>__<KEY>, e.g. PIPESTATE_STATE__URL=postgresql+psycopg://...
# Relative paths here (sqlite:///pipestate.db, a source path, a stage folder) are
# relative to this file's folder, so the file works from any current folder.

[pipeline]
name = "orders"                 # letters, digits, '_' and '-'
timezone = "UTC"                # IANA name; defines the local day (e.g. "America/New_York")
granularity = "1h"              # "<N>m" or "<N>h" (1 minute .. 24 hours), or "1d" (one window per local day)
start = "2026-01-01"            # first local day (or local datetime) to cover
# end = "2026-02-01"            # exclusive; default: now minus lag
lag = "15m"                     # a window is only created once now >= its end + lag

[state]
url = "sqlite:///pipestate.db"  # beside this file; any SQLAlchemy URL: duckdb, postgresql+psycopg, ...
table = "pipeline_state"
# schema = ""
# connect_timeout = "10s"       # PostgreSQL: bounds on every wait ("0s": none)
# statement_timeout = "5m"

# [ids]                         # how new windows get their ids: built-in or "module:function"
# batch_id = "deterministic"    # deterministic | uuid5 | uuid4 | "mypkg.ids:batch_id"

# [categories]                  # none | local_weekday | weekday_weekend | local_month
#                               # | granularity | record_origin | "module:function"
# source_category = "none"

# [concurrency]                 # for workers: pipestate claim / heartbeat / complete / fail
# lease = "10m"                 # at most 24h
# max_in_flight = 0
# max_retries = 3
# retry_backoff = "1m"
# claim_order = "oldest_first"
# claim_batch = 1              # the most windows one claim takes (docs/workers.md)

# [mirror]                      # pipestate mirror: a copy of the state table in Snowflake
# url = "snowflake://user:password@account/database/schema?warehouse=WH"   # or PIPESTATE_MIRROR__URL
# table = ""                    # default: the state table's name

# [run]                         # pipestate run with claim_batch > 1 (docs/running.md)
# max_run_records = 1000000     # a load of a run stops taking windows at this many records
"""
