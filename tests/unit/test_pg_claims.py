"""PostgreSQL's one-statement claim stays short enough for psycopg to cache its conversion.

psycopg converts `%(name)s` placeholders to `$n` for every execution of a query
longer than MAX_CACHED_STATEMENT_LENGTH bytes; for the claim that cost ~0.3 ms
of client CPU a cycle. What workers run (the database's clock) must fit with the
longest identifiers PostgreSQL allows; the variant with an injected clock (tests,
replays) with ordinary names.
"""

from __future__ import annotations

import pytest
from sqlalchemy.dialects import postgresql

from pipestate.store.pg_claims import _claim_statement, _complete_statement
from pipestate.store.schema import build_tables

# psycopg's own limit (a private module: the test follows it if it changes)
_queries = pytest.importorskip("psycopg._queries", reason="psycopg is not installed")

# 63 bytes is PostgreSQL's identifier limit; the events table adds "_events".
LONGEST = ("s" * 63, "t" * 56)
ORDINARY = ("analytics", "orders_state")


@pytest.mark.parametrize("newest_first", [False, True])
@pytest.mark.parametrize(("clock", "names"), [(False, LONGEST), (True, ORDINARY)])
def test_claim_and_complete_fit_psycopgs_statement_cache(
    newest_first: bool, clock: bool, names: tuple[str, str]
) -> None:
    dialect = postgresql.dialect()
    schema, table = names
    tables = build_tables(table, schema, "postgresql")
    state = dialect.identifier_preparer.format_table(tables.state)
    events = dialect.identifier_preparer.format_table(tables.events)
    claim = _claim_statement(tables.state, tables.events, state, events, newest_first, clock)
    complete = _complete_statement(state, events, True, clock)
    for stmt in (claim, complete):
        sql = str(stmt.compile(dialect=dialect))
        assert state in sql
        assert len(sql.encode()) <= _queries.MAX_CACHED_STATEMENT_LENGTH
