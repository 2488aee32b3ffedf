"""Stage `fsspec` (aliases `local`, `s3`): one file per batch under a base URL, written atomically.

Local directories work with no extra package; `s3://` goes through fsspec and s3fs
(`pip install "pipestate[s3]"`), and any other fsspec protocol works once its package is there.
A batch's file is written under a temporary name next to its final key and then moved there,
so a file at the final key is always complete; that file is what `find` returns on a retry.
"""

from __future__ import annotations

import gzip
import json
import os
import string
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import field_validator, model_validator

from ..errors import ConfigError
from .base import BatchContext, ConnectorError, Options, StagedData, dumps, require

__all__ = ["FsspecStage"]

_PLACEHOLDERS = {"pipeline", "yyyy", "mm", "dd", "hh", "batch_id"}
_EXTENSION = {"ndjson.gz": ".ndjson.gz", "parquet": ".parquet"}


class StageOptions(Options):
    type: Literal["fsspec", "local", "s3"] = "local"
    url: str = "./pipestate-stage"  # a directory, file:///abs/dir, s3://bucket/prefix, ...
    format: Literal["ndjson.gz", "parquet"] = "ndjson.gz"
    key_template: str = "{pipeline}/{yyyy}/{mm}/{dd}/{batch_id}"  # the extension is appended
    storage_options: dict[str, Any] = {}  # passed to the fsspec filesystem (s3fs: key, secret...)

    @field_validator("key_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as err:
            raise ValueError(f"not a valid template: {err}") from err
        unknown = names - _PLACEHOLDERS
        if unknown:
            allowed = ", ".join("{" + n + "}" for n in sorted(_PLACEHOLDERS))
            raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}} (allowed: {allowed})")
        if "batch_id" not in names:
            raise ValueError("must contain {batch_id}, or two batches would share a file")
        return value

    @model_validator(mode="after")
    def _url_fits_type(self) -> StageOptions:
        scheme = self.url.split("://", 1)[0].lower() if "://" in self.url else "file"
        if self.type == "s3" and scheme not in ("s3", "s3a"):
            raise ValueError("url: must start with s3:// for type 's3'")
        if self.type == "local" and scheme != "file":
            raise ValueError("url: must be a directory or file:// URL for type 'local'")
        return self


class _LocalFS:
    """The few filesystem calls the stage makes, for local paths when fsspec is not installed."""

    def open(self, path: str, mode: str = "rb") -> IO[bytes]:
        return open(path, mode)  # noqa: SIM115 - the caller closes it

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def makedirs(self, path: str, exist_ok: bool = True) -> None:
        os.makedirs(path, exist_ok=exist_ok)

    def mv(self, source: str, destination: str) -> None:
        os.replace(source, destination)

    def rm_file(self, path: str) -> None:
        os.remove(path)

    def unstrip_protocol(self, path: str) -> str:
        return Path(path).as_uri()

    def _strip_protocol(self, location: str) -> str:
        return location.removeprefix("file://")


def _filesystem(options: StageOptions) -> tuple[Any, str, bool]:
    """(filesystem, root path without protocol, whether it is local)."""
    url = options.url
    local = "://" not in url or url.lower().startswith("file://")
    if local and not options.storage_options:
        try:
            import fsspec  # noqa: F401 - prefer it when present, for identical behaviour
        except ImportError:
            root = url[len("file://") :] if url.lower().startswith("file://") else url
            return _LocalFS(), os.path.abspath(root), True
    if local and "://" not in url:
        url = Path(url).absolute().as_uri()
    fsspec = require("fsspec", "s3", "stage")
    if not local:
        protocol = url.split("://", 1)[0].lower()
        try:
            fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as err:
            hint = ' (pip install "pipestate[s3]")' if protocol.startswith("s3") else ""
            raise ConfigError(f"[stage] url: no filesystem for {protocol}://: {err}{hint}") from err
    storage = dict(options.storage_options)
    if "region" in storage:  # s3fs takes the region through botocore's client arguments
        storage.setdefault("client_kwargs", {})["region_name"] = storage.pop("region")
    try:
        fs, root = fsspec.core.url_to_fs(url, **storage)
    except TypeError as err:
        raise ConfigError(f"[stage] storage_options: {err}") from err
    return fs, root.rstrip("/") or "/", local


class FsspecStage:
    """One `ndjson.gz` or `parquet` file per batch under `url`, at `key_template` + extension."""

    Options = StageOptions

    def __init__(self, options: StageOptions) -> None:
        self.options = options
        self.fs, self.root, self._local = _filesystem(options)
        if options.format == "parquet":
            require("pyarrow.parquet", "parquet", "stage")

    def key(self, batch: BatchContext) -> str:
        """The batch's file path relative to `url`."""
        local_start = batch.start.astimezone(batch.tz)
        parts = {
            "pipeline": batch.pipeline,
            "yyyy": f"{batch.local_date.year:04d}",
            "mm": f"{batch.local_date.month:02d}",
            "dd": f"{batch.local_date.day:02d}",
            "hh": f"{local_start.hour:02d}",
            "batch_id": batch.batch_id,
        }
        return self.options.key_template.format(**parts) + _EXTENSION[self.options.format]

    def path(self, batch: BatchContext) -> str:
        return f"{self.root}/{self.key(batch)}"

    def write(self, batch: BatchContext, records: Iterable[dict[str, Any]]) -> StagedData:
        final = self.path(batch)
        folder, _, name = final.rpartition("/")
        temporary = f"{folder}/.{name}.tmp-{uuid.uuid4().hex}"
        if self._local:
            self.fs.makedirs(folder, exist_ok=True)
        try:
            with self.fs.open(temporary, "wb") as raw:
                count = self._write_records(raw, records)
            self.fs.mv(temporary, final)
        except BaseException:
            self._discard(temporary)
            raise
        return StagedData(
            location=self.fs.unstrip_protocol(final),
            record_count=count,
            bytes=self.fs.size(final),
            file_format=self.options.format,
        )

    def _write_records(self, raw: IO[bytes], records: Iterable[dict[str, Any]]) -> int:
        count = 0
        if self.options.format == "ndjson.gz":
            # mtime=0: the same records give byte-identical files.
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
                chunk: list[bytes] = []
                for record in records:
                    chunk.append(dumps(record).encode("utf-8"))
                    count += 1
                    if len(chunk) == 1000:
                        packed.write(b"\n".join(chunk) + b"\n")
                        chunk.clear()
                if chunk:
                    packed.write(b"\n".join(chunk) + b"\n")
            return count
        pyarrow = require("pyarrow", "parquet", "stage")
        parquet = require("pyarrow.parquet", "parquet", "stage")
        # Parquet needs one schema for the file, so the batch is gathered in memory first.
        rows = list(records)
        try:
            table = pyarrow.Table.from_pylist(rows)
        except (pyarrow.ArrowInvalid, pyarrow.ArrowTypeError) as err:
            raise ConnectorError(
                f"[stage] format parquet: records do not share one schema ({err}); use format = 'ndjson.gz'"
            ) from err
        parquet.write_table(table, raw)
        return len(rows)

    def _discard(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm_file(path)
        except Exception:  # noqa: BLE001, S110 - cleanup must not hide the original error
            pass

    def find(self, batch: BatchContext) -> StagedData | None:
        final = self.path(batch)
        if not self.fs.exists(final):
            return None
        location = self.fs.unstrip_protocol(final)
        if self.options.format == "parquet":
            parquet = require("pyarrow.parquet", "parquet", "stage")
            with self.fs.open(final, "rb") as handle:
                count = parquet.ParquetFile(handle).metadata.num_rows
        else:
            count = sum(1 for _ in self._ndjson(final))
        return StagedData(location, count, self.fs.size(final), self.options.format)

    def read(self, staged: StagedData) -> Iterator[dict[str, Any]]:
        path = self.fs._strip_protocol(staged.location)
        if staged.file_format == "parquet":
            parquet = require("pyarrow.parquet", "parquet", "stage")
            with self.fs.open(path, "rb") as handle:
                for chunk in parquet.ParquetFile(handle).iter_batches():
                    yield from chunk.to_pylist()
        elif staged.file_format == "ndjson.gz":
            for line in self._ndjson(path):
                yield json.loads(line)
        else:
            raise ConnectorError(f"[stage] cannot read format {staged.file_format!r}")

    def _ndjson(self, path: str) -> Iterator[bytes]:
        with self.fs.open(path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as packed:
            for line in packed:
                if line.strip():
                    yield line

    def describe(self) -> str:
        """Where batches go, without credentials."""
        return self.fs.unstrip_protocol(self.root)
