"""The pipeline's lock row in `<table>_meta`: created once, and locked by populate and claims."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import (
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection

from ..errors import StateStoreError

if TYPE_CHECKING:
    from .store import StateStore


def lock_pipeline(store: StateStore, conn: Connection, pipeline: str, holder: str) -> None:
    """Serialize with every other writer of this pipeline until the transaction ends.

    Call `ensure_lock_row` first, outside the transaction.
    """
    meta = store.tables.meta
    stmt = (
        update(meta)
        .where(meta.c.name == f"lock:{pipeline}")
        .values(value=holder[:255], updated_at=store.now(conn))
    )
    if conn.execute(stmt).rowcount != 1:
        raise StateStoreError(f"lock row for pipeline {pipeline} is missing from {meta.name}")


def ensure_lock_row(store: StateStore, pipeline: str) -> None:
    """Create the pipeline's lock row if missing, in its own transaction, so
    that a concurrent creator loses cleanly instead of aborting our work."""
    meta = store.tables.meta
    name = f"lock:{pipeline}"
    with store.transaction(write=True) as conn:
        if conn.execute(select(meta.c.name).where(meta.c.name == name)).first() is not None:
            return
    try:
        with store.transaction(write=True) as conn:
            conn.execute(insert(meta).values(name=name, value="", updated_at=None))
    except StateStoreError:
        with store.transaction(write=False) as conn:
            if conn.execute(select(meta.c.name).where(meta.c.name == name)).first() is None:
                raise
