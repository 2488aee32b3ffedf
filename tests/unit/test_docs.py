"""The generated docs match the code they describe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_state_table_doc_is_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_state_table_doc.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout


def test_state_table_doc_names_every_column() -> None:
    from pipestate.store.schema import COLUMNS

    text = (ROOT / "docs" / "state-table.md").read_text(encoding="utf-8")
    missing = [name for _, name, _, _, _ in COLUMNS if f"| `{name}` |" not in text]
    assert not missing
