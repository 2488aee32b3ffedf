"""Safe keys: whatever a batch id holds, the stage writes below its url, and reads back what
it wrote (issue 20, point 5). Rows written by another tool are valid input, ids included."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import run_support
from sqlalchemy import text

from pipestate.config import Config
from pipestate.connectors import BatchContext, build_stage
from pipestate.manager import PipelineStateManager
from pipestate.run.runner import run_pipeline

HOSTILE_IDS = [
    "../../../../escape/PWNED",
    "/abs/olute",
    "back\\slash\\..\\..",
    "..",
    ".",
    "tab\there\x01\x1b]0;title\x07",
    "x" * 400,
    "with space",
    "per%25cent",
    "co:lon",
    "ques?tion",
    "ha#sh",
    "st*ar",
    "<angle>",
    "it's",
    "é-ünïcode-日本",
]


def test_hostile_batch_ids_stay_inside_the_stage_and_load_exactly_once(tmp_path: Path) -> None:
    events = run_support.write_events(tmp_path / "source", datetime(2026, 1, 1, tzinfo=UTC), 24, 5)
    data = run_support.config(
        tmp_path, "2026-01-01", "2026-01-02", target_url=f"sqlite:///{tmp_path / 't.db'}"
    )
    with PipelineStateManager(Config.from_dict(data)) as manager:
        manager.populate_pipeline_batches()
        with manager.store.engine.begin() as conn:
            ids = [row[0] for row in conn.execute(text("SELECT batch_id FROM pipeline_state ORDER BY 1"))]
            for old, new in zip(ids, HOSTILE_IDS, strict=False):
                conn.execute(
                    text("UPDATE pipeline_state SET batch_id = :new WHERE batch_id = :old"),
                    {"new": new, "old": old},
                )
        result = run_pipeline(manager)
        assert result.summary.completed == 24, manager.counts()
    assert not (tmp_path / "escape").exists() and not Path("/abs").exists()
    allowed = {"source", "stage", "t.db", "state.db"}
    assert {p.name for p in tmp_path.iterdir()} <= allowed | {"state.db-journal", "t.db-journal"}
    loaded = run_support.target_rows(data["target"]["url"], data["state"]["url"])
    assert len({row[0] for row in loaded}) == len(loaded) == events
    assert {row[1] for row in loaded} >= set(HOSTILE_IDS)


def test_safe_key_is_plain_unique_and_keeps_default_ids() -> None:
    from pipestate.connectors.fsspec_stage import safe_key

    keys = [safe_key(batch_id) for batch_id in HOSTILE_IDS]
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert key not in (".", "..") and not key.startswith(".")
        assert all(c.isascii() and (c.isalnum() or c in "-_.~") for c in key) and len(key) <= 150
    assert safe_key("orders-20260101T050000Z-20260101T060000Z") == "orders-20260101T050000Z-20260101T060000Z"
    assert safe_key("a/b") != safe_key("a~2Fb")


def test_a_key_template_that_climbs_out_is_refused(tmp_path: Path) -> None:
    from pipestate.errors import ConnectorError

    stage = build_stage({"type": "local", "url": str(tmp_path / "stage"), "key_template": "../{batch_id}"})
    batch = BatchContext.for_window(
        "orders", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 1, tzinfo=UTC)
    )
    with pytest.raises(ConnectorError, match="key_template"):
        stage.write(batch, [{"id": 1}])
    assert not any(tmp_path.iterdir())
