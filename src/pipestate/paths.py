"""Relative paths in a config, made absolute against the config file's folder (contract section 2).

Pure and import-free of the rest of pipestate, so both config.py and the
connectors (whose default paths follow the config file too) can use it.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["anchor_path"]

_EMBEDDED_URL = re.compile(r"^(?P<scheme>(sqlite|duckdb)(\+\w+)?:///)(?P<path>[^?]*)(?P<query>\?.*)?$")


def anchor_path(value: str, base: Path) -> str:
    """`value` with a relative local path made absolute against `base`; anything else as is.

    Handles plain paths (`data/events`, `./stage`) and the embedded databases'
    URLs (`sqlite:///state.db`, `duckdb:///target.duckdb?threads=2`); leaves
    absolute paths, `:memory:`, `file:` URIs and other URLs (`s3://`, `postgresql://`) alone.
    """
    match = _EMBEDDED_URL.match(value)
    if match:
        path = match.group("path")
        if not path or path.startswith((":memory:", "file:", "md:")) or Path(path).is_absolute():
            return value
        return f"{match.group('scheme')}{base / path}{match.group('query') or ''}"
    if "://" in value or not value or Path(value).expanduser().is_absolute():
        return str(Path(value).expanduser()) if value.startswith("~") else value
    return str(base / value)
