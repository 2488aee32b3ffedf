"""A harness that locks like Snowflake, over the local PostgreSQL (tests and bench/snowflake.py).

fakesnow is DuckDB underneath: it raises a conflict where Snowflake queues, enforces
the primary key Snowflake ignores and has no statement latency. This harness puts the
state table in PostgreSQL and wraps every statement pipestate sends so that it behaves
as Snowflake's standard tables are documented to:

- **one round trip per statement**: each statement (and each COMMIT of an explicit
  transaction) costs `latency` seconds, slept by the client;
- **table-level DML locks held to commit**: an INSERT, UPDATE, DELETE or MERGE first
  takes its table's lock (a PostgreSQL advisory lock per table, transaction-scoped);
  an autocommitted statement runs in its own transaction, so its lock is held for
  its whole latency; reads take no lock;
- **at most 20 waiters**: a DML statement that finds 20 statements already waiting
  for the lock fails at once with `000625 (57014): ... the number of waiters for this
  lock exceeds the 20 statements limit`;
- **statement-level READ COMMITTED** (PostgreSQL's own);
- **primary keys not enforced** (`unenforce_keys` drops them after init-db);
- **both answers to the re-read question**: `reread=True`, a statement that waited
  for the lock sees what committed while it waited (PostgreSQL takes the UPDATE's
  snapshot after the lock statement); `reread=False`, an UPDATE picks its rows from
  the snapshot at its arrival, before the wait, and then writes those rows as they
  are after the wait (the SET applies to the newest row; the WHERE is not
  re-checked), so it can overwrite a claim that committed while it waited.

Not modelled: Snowflake's SQL dialect (the statements are PostgreSQL's; fakesnow
covers the dialect), micro-partition pruning and warehouse queueing, a statement's
time varying with its size, LOCK_TIMEOUT (PostgreSQL's lock_timeout is not set),
deadlock detection across tables (no pipestate path locks two tables), and the
connector's own retries. The pipestate profile is Snowflake's (stamp claims, no
row locks, transient 000625) with PostgreSQL's SQL functions.
"""

from __future__ import annotations

import re
import threading
import time
import zlib
from collections import Counter
from dataclasses import replace
from typing import Any

import psycopg
from sqlalchemy import create_engine, func, literal
from sqlalchemy.engine import Engine
from sqlalchemy.types import Interval

from pipestate.store.backends import BACKENDS

WAITER_LIMIT = 20
_NAMESPACE = 19_019  # advisory lock class id of the harness's table locks
_TABLES = re.compile(r'\b(?:FROM|INTO|UPDATE|JOIN)\s+("?[\w.]+"?)', re.I)
_DML = re.compile(r'^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|MERGE\s+INTO)\s+("?[\w.]+"?)', re.I)

# Snowflake's profile, with PostgreSQL's SQL for the clock and interval arithmetic.
PROFILE = replace(
    BACKENDS["postgresql"],
    row_locks=False,
    one_statement_claims=False,
    fence_in_update=False,
    stamp_claims=True,
    reflects_unique_ids=False,
    now_function=lambda: func.statement_timestamp(),
    plus_interval=lambda instant, delta: instant + literal(delta, Interval()),
)


class LockQueueFull(psycopg.OperationalError):
    """Snowflake's 000625, as the harness raises it."""


class Harness:
    """Statement counts of this process, and the model's knobs."""

    def __init__(self, latency: float = 0.02, reread: bool = True, locks: bool = True) -> None:
        self.latency = latency
        self.reread = reread
        self.locks = locks  # False: latency only, PostgreSQL's own locking (the comparison)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def engine(self, url: str) -> Engine:
        """An engine on the local PostgreSQL whose statements behave as above."""
        # synchronous_commit off: a commit's cost is part of the modelled latency,
        # not this machine's disk.
        engine = create_engine(url, connect_args={"options": "-c synchronous_commit=off"})
        dialect: Any = engine.dialect
        if self.locks:
            dialect.pipestate_backend = PROFILE
        run = dialect.do_execute
        run_many = dialect.do_executemany
        commit = dialect.do_commit

        def do_execute(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
            self._statement(cursor, statement, parameters, lambda s, p: run(cursor, s, p, context))

        def do_executemany(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
            self._statement(cursor, statement, parameters, lambda s, p: run_many(cursor, s, p, context))

        def do_commit(dbapi_connection: Any) -> None:
            self.count("statement")
            time.sleep(self.latency)  # COMMIT is a statement, a round trip; locks go with it
            commit(dbapi_connection)

        dialect.do_execute = do_execute
        dialect.do_executemany = do_executemany
        dialect.do_commit = do_commit
        return engine

    def _statement(self, cursor: Any, statement: str, parameters: Any, run: Any) -> None:
        match = _DML.match(statement)
        self.count("statement")
        for name in {found.strip('"').split(".")[-1] for found in _TABLES.findall(statement)}:
            self.count(f"table:{name}")  # a statement that reads or writes that table
        if match is None or not self.locks:
            time.sleep(self.latency)
            run(statement, parameters)
            return
        table = match.group(1).strip('"').split(".")[-1]
        connection = cursor.connection
        own_transaction = connection.autocommit
        aux = connection.cursor()
        if own_transaction:
            aux.execute("BEGIN")
        try:
            if not self.reread and statement.lstrip()[:6].upper() == "UPDATE":
                statement, parameters = self._pick_now(aux, statement, parameters, table)
            key = lock_key(table)["k"]
            aux.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", (_NAMESPACE, key))
            if not aux.fetchone()[0]:  # held: count the queue, then wait in it
                aux.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
                    "AND objid = %s AND NOT granted",
                    (_NAMESPACE, key),
                )
                if aux.fetchone()[0] >= WAITER_LIMIT:
                    self.count("000625")
                    raise LockQueueFull(
                        f"000625 (57014): Statement was aborted because the number of waiters for "
                        f"this lock exceeds the {WAITER_LIMIT} statements limit (table {table})"
                    )
                aux.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_NAMESPACE, key))
            time.sleep(self.latency)  # the statement's time, under its lock
            run(statement, parameters)
            if own_transaction:
                aux.execute("COMMIT")
        except BaseException:
            if own_transaction:
                aux.execute("ROLLBACK")
            raise
        finally:
            aux.close()

    @staticmethod
    def _pick_now(aux: Any, statement: str, parameters: Any, table: str) -> tuple[str, Any]:
        """`reread=False`: the rows an UPDATE changes are those its WHERE picks from the
        snapshot at its arrival, before any wait for the lock."""
        head, where = _split_where(statement)
        if where is None or not isinstance(parameters, dict):
            return statement, parameters
        aux.execute(f"SELECT batch_id FROM {table} WHERE {where}", parameters)
        picked = [row[0] for row in aux.fetchall()]
        return f"{head} WHERE batch_id = ANY(%(snowsim_picked)s)", {**parameters, "snowsim_picked": picked}


def lock_key(table: str) -> dict[str, int]:
    """The advisory lock that stands for `table`'s lock: `{"n": class, "k": key}`."""
    return {"n": _NAMESPACE, "k": zlib.crc32(table.encode()) & 0x7FFFFFFF}


def _split_where(statement: str) -> tuple[str, str | None]:
    """An UPDATE cut at its own WHERE (the first one outside parentheses)."""
    depth = 0
    upper = statement.upper()
    index = 0
    while index < len(statement):
        char = statement[index]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0 and upper.startswith(" WHERE ", index):
            return statement[:index], statement[index + 7 :]
        index += 1
    return statement, None


def unenforce_keys(engine: Engine, table: str) -> None:
    """Snowflake does not enforce primary keys: drop the state and meta tables' ones.

    A plain (not unique) index on the key stays, standing in for the hash join
    Snowflake runs where pipestate looks for a duplicated batch_id; without it
    PostgreSQL would answer that check by a nested loop over the whole table."""
    with engine.begin() as conn:
        for name, key in ((table, "batch_id"), (f"{table}_meta", "name")):
            conn.exec_driver_sql(f'ALTER TABLE "{name}" DROP CONSTRAINT IF EXISTS "{name}_pkey"')
            conn.exec_driver_sql(f'CREATE INDEX IF NOT EXISTS "{name}_key" ON "{name}" ({key})')
