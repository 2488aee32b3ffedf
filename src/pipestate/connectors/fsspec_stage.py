"""Stage `fsspec` (aliases `local`, `s3`): a batch's records as Parquet (zstd) or NDJSON.gz
files under a base URL, written as they stream in and published atomically.

Local directories work with no extra package; `s3://` goes through fsspec and s3fs
(`pip install "pipestate[s3]"`), and any other fsspec protocol works once its package is there.
Files are written under temporary names next to their final keys and moved there when complete.
A batch bigger than `max_file_mb` is split into parts (`<key>.part-00001.parquet`, ...) listed
by a manifest (`<key>.manifest.json`) that is written last; so what `find` returns on a retry,
the single file or the manifest's parts, is always complete.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import string
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError, ConnectorError
from .arrow import (
    CHUNK_ROWS,
    conform,
    dumps,
    merge_schemas,
    parquet_ready,
    record_batches,
)
from .protocols import BatchContext, StagedData
from .registry import Options, require

__all__ = ["FsspecStage", "safe_key"]

log = logging.getLogger("pipestate.stage")

_PLACEHOLDERS = {"pipeline", "yyyy", "mm", "dd", "hh", "batch_id"}
_EXTENSION = {"ndjson.gz": ".ndjson.gz", "parquet": ".parquet"}
_MANIFEST = ".manifest.json"
_ROW_GROUP_ROWS = 65_536  # rows gathered before a Parquet row group is written
_ROW_GROUP_BYTES = 32 << 20  # or this many bytes of Arrow data, whichever comes first
_NDJSON_BLOCK = 32 << 20  # bytes of NDJSON parsed at a time when reading back
# A file's fingerprint covers its last bytes: the Parquet footer (every column chunk's offsets,
# sizes and statistics) or the gzip trailer (a CRC of all the data), unless the filesystem
# gives a checksum of the whole object (an S3 ETag).
_TAIL_BYTES = 64 << 10
_CHECKSUM_KEYS = ("ETag", "etag", "md5Hash", "crc32c", "checksum")


class StageOptions(Options):
    type: Literal["fsspec", "local", "s3"] = "local"
    url: str = "./pipestate-stage"  # a directory, file:///abs/dir, s3://bucket/prefix, ...
    format: Literal["parquet", "ndjson.gz"] = "parquet"
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"  # Parquet's codec
    max_file_mb: int = Field(default=512, gt=0)  # a batch beyond this is split into parts
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


_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
_LONGEST_KEY = 150  # characters of an encoded id kept whole; a longer one ends in a hash


def safe_key(batch_id: str) -> str:
    """A batch id as one file or object name, whatever it holds: every character but ASCII
    letters, digits, `-`, `_` and `.` (and a leading `.`) becomes `~XX` per UTF-8 byte, so
    `..`, `/`, `\\`, control characters, spaces or `%` never reach a path or a URI, and two ids
    never share a name. Ids of those characters alone (every default id) stay as they are. An
    encoded id longer than 150 characters keeps its first 100 and a SHA-256 of the whole id."""
    encoded = "".join(
        char
        if char in _SAFE and not (index == 0 and char == ".")
        else "".join(f"~{b:02X}" for b in char.encode())
        for index, char in enumerate(batch_id)
    )
    if not encoded:
        raise ConnectorError("batch_id: empty; it cannot name a staged file")
    if len(encoded) > _LONGEST_KEY:
        encoded = (
            f"{encoded[:100]}~~{hashlib.sha256(batch_id.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"
        )
    return encoded


class _LocalFS:
    """The few filesystem calls the stage makes, for local paths when fsspec is not installed."""

    def open(self, path: str, mode: str = "rb") -> IO[bytes]:
        return open(path, mode)  # noqa: SIM115 - the caller closes it

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def info(self, path: str) -> dict[str, Any]:
        return {"size": os.path.getsize(path)}

    def makedirs(self, path: str, exist_ok: bool = True) -> None:
        os.makedirs(path, exist_ok=exist_ok)

    def mv(self, source: str, destination: str) -> None:
        os.replace(source, destination)

    def rm_file(self, path: str) -> None:
        os.remove(path)

    def cat_file(self, path: str) -> bytes:
        with open(path, "rb") as handle:
            return handle.read()

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
    """A batch's records under `url`, at `key_template` + extension, as Parquet or NDJSON.gz."""

    Options = StageOptions

    def __init__(self, options: StageOptions) -> None:
        self.options = options
        self.fs, self.root, self._local = _filesystem(options)
        self._max_bytes = options.max_file_mb << 20

    def key(self, batch: BatchContext) -> str:
        """The batch's file path relative to `url`."""
        local_start = batch.start.astimezone(batch.tz)
        parts = {
            "pipeline": batch.pipeline,
            "yyyy": f"{batch.local_date.year:04d}",
            "mm": f"{batch.local_date.month:02d}",
            "dd": f"{batch.local_date.day:02d}",
            "hh": f"{local_start.hour:02d}",
            "batch_id": safe_key(batch.batch_id),
        }
        key = self.options.key_template.format(**parts) + _EXTENSION[self.options.format]
        if any(part in ("", ".", "..") for part in key.split("/")):
            raise ConnectorError(f"[stage] key_template: {key!r} is not a plain path below the stage url")
        return key

    def path(self, batch: BatchContext) -> str:
        return f"{self.root}/{self.key(batch)}"

    def _manifest_path(self, final: str) -> str:
        return final.removesuffix(_EXTENSION[self.options.format]) + _MANIFEST

    def _part_path(self, final: str, number: int) -> str:
        extension = _EXTENSION[self.options.format]
        return f"{final.removesuffix(extension)}.part-{number:05d}{extension}"

    def write(self, batch: BatchContext, chunks: Iterable[pa.RecordBatch]) -> StagedData:
        final = self.path(batch)
        folder = final.rpartition("/")[0]
        if self._local:
            self.fs.makedirs(folder, exist_ok=True)
        writer = _PartWriter(self, folder)
        try:
            for chunk in record_batches(chunks):  # dicts too, for callers other than the runner
                writer.add(chunk)
            parts = writer.close()
            return self._publish(final, parts)
        except BaseException:
            writer.abort()
            raise

    def _publish(self, final: str, parts: list[tuple[str, int, int]]) -> StagedData:
        """Move the complete parts to their final names; the manifest, if any, goes last."""
        manifest = self._manifest_path(final)
        self._discard(manifest)  # a stale manifest must never list parts being replaced
        count = sum(rows for _, rows, _ in parts)
        size = sum(size for _, _, size in parts)
        if len(parts) == 1:
            self.fs.mv(parts[0][0], final)
            location = self.fs.unstrip_protocol(final)
            return StagedData(
                location, count, size, self.options.format, fingerprint=self.fingerprint([final])
            )
        self._discard(final)
        names = []
        for number, (temporary, _, _) in enumerate(parts, start=1):
            name = self._part_path(final, number)
            self.fs.mv(temporary, name)
            names.append(name)
        text = {
            "format": self.options.format,
            "record_count": count,
            "bytes": size,
            "files": [
                {"name": name.rpartition("/")[2], "records": rows}
                for name, (_, rows, _) in zip(names, parts, strict=True)
            ],
        }
        temporary = f"{manifest.rpartition('/')[0]}/.{manifest.rpartition('/')[2]}.tmp-{uuid.uuid4().hex}"
        with self.fs.open(temporary, "wb") as handle:
            handle.write(json.dumps(text, indent=1).encode("utf-8"))
        self.fs.mv(temporary, manifest)
        return self._staged_parts(manifest, text)

    def _staged_parts(self, manifest: str, text: dict[str, Any]) -> StagedData:
        folder = manifest.rpartition("/")[0]
        paths = [f"{folder}/{entry['name']}" for entry in text["files"]]
        files = tuple(self.fs.unstrip_protocol(path) for path in paths)
        return StagedData(
            self.fs.unstrip_protocol(manifest),
            int(text["record_count"]),
            int(text["bytes"]),
            str(text["format"]),
            file_count=len(files),
            files=files,
            fingerprint=self.fingerprint([manifest, *paths]),
        )

    def fingerprint(self, paths: list[str]) -> str:
        """What the files hold now, cheaply: each one's size and its checksum (the object's
        ETag where the filesystem has one, else a SHA-256 of its last 64 KiB); a file that
        is gone reads as "missing". A changed record of a file pipestate wrote changes its
        fingerprint (the gzip CRC; the Parquet footer's sizes and statistics, short of a
        forgery of the same length)."""
        digest = hashlib.sha256()
        for path in paths:
            with contextlib.suppress(AttributeError):
                self.fs.invalidate_cache(path)  # another process may have replaced it
            try:
                info = self.fs.info(path)
            except FileNotFoundError:
                digest.update(f"{path.rpartition('/')[2]}:missing\n".encode())
                continue
            size = int(info.get("size") or 0)
            checksum = next((str(info[key]) for key in _CHECKSUM_KEYS if info.get(key)), None)
            if checksum is None:
                with self.fs.open(path, "rb") as handle:
                    handle.seek(max(size - _TAIL_BYTES, 0))
                    checksum = hashlib.sha256(handle.read()).hexdigest()
            digest.update(f"{path.rpartition('/')[2]}:{size}:{checksum}\n".encode())
        return f"sha256:{digest.hexdigest()[:32]}"

    def _discard(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm_file(path)
        except Exception:  # noqa: BLE001, S110 - cleanup must not hide the original error
            pass

    def find(self, batch: BatchContext) -> StagedData | None:
        final = self.path(batch)
        manifest = self._manifest_path(final)
        if self.fs.exists(manifest):
            return self._staged_parts(manifest, json.loads(self.fs.cat_file(manifest)))
        if not self.fs.exists(final):
            return None
        location = self.fs.unstrip_protocol(final)
        if self.options.format == "parquet":
            with self.fs.open(final, "rb") as handle:
                count = pq.ParquetFile(handle).metadata.num_rows
        else:
            with self.fs.open(final, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as packed:
                count = sum(1 for line in packed if line.strip())
        return StagedData(
            location, count, self.fs.size(final), self.options.format, fingerprint=self.fingerprint([final])
        )

    def read(self, staged: StagedData) -> Iterator[pa.RecordBatch]:
        if staged.file_format not in _EXTENSION:
            raise ConnectorError(f"[stage] cannot read format {staged.file_format!r}")
        for uri in staged.uris:
            path = self.fs._strip_protocol(uri)
            with self.fs.open(path, "rb") as handle:
                if staged.file_format == "parquet":
                    yield from pq.ParquetFile(handle).iter_batches(batch_size=CHUNK_ROWS)
                else:
                    yield from _ndjson_batches(handle)

    def local_path(self, staged: StagedData) -> list[str] | None:
        """The staged files as local paths, when the stage is on this machine's disk."""
        if not self._local:
            return None
        return [self.fs._strip_protocol(uri) for uri in staged.uris]

    def describe(self) -> str:
        """Where batches go, without credentials."""
        return self.fs.unstrip_protocol(self.root)


class _PartWriter:
    """Writes record batches into temporary part files, a new one when a part reaches the size
    threshold or the records bring a field (or a wider type) the open part cannot hold."""

    def __init__(self, stage: FsspecStage, folder: str) -> None:
        self.stage, self.folder = stage, folder
        self.format = stage.options.format
        self.parts: list[tuple[str, int, int]] = []  # (temporary path, rows, bytes)
        self.notes: list[str] = []  # columns written differently from how they came
        self._handle: Any = None
        self._path = ""
        self._rows = 0
        self._parquet: pq.ParquetWriter | None = None
        self._gzip: gzip.GzipFile | None = None
        self._schema: pa.Schema | None = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = self._pending_bytes = 0
        self._group_bytes = min(_ROW_GROUP_BYTES, stage._max_bytes // 4)

    def add(self, chunk: pa.RecordBatch) -> None:
        if not chunk.num_rows:
            return
        if self._handle is not None and self._handle.tell() >= self.stage._max_bytes:
            self._finish_part()
        if self.format == "ndjson.gz":
            self._ndjson(chunk)
            return
        chunk, notes = parquet_ready(chunk)
        for note in notes:
            if note not in self.notes:
                self.notes.append(note)
                log.warning("stage: %s", note)
        if self._schema is None:
            self._schema = chunk.schema
        elif chunk.schema != self._schema:
            merged = merge_schemas(self._schema, chunk.schema)
            if merged != self._schema:
                self._finish_part()  # a Parquet file has one schema: the new one starts a part
                self._schema = merged
            chunk = conform(chunk, self._schema)
        self._pending.append(chunk)
        self._pending_rows += chunk.num_rows
        self._pending_bytes += chunk.nbytes
        # A row group is written at _ROW_GROUP_ROWS rows, or sooner when the rows are wide, so
        # memory stays bounded and the size threshold is checked often enough to split.
        if self._pending_rows >= _ROW_GROUP_ROWS or self._pending_bytes >= self._group_bytes:
            self._flush()

    def _open(self) -> None:
        self._path = f"{self.folder}/.part-{uuid.uuid4().hex}.tmp"
        self._handle = self.stage.fs.open(self._path, "wb")
        self._rows = 0

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._handle is None:
            self._open()
        assert self._schema is not None
        if self._parquet is None:
            codec = self.stage.options.compression
            self._parquet = pq.ParquetWriter(
                self._handle, self._schema, compression=codec, use_dictionary=dictionary_columns(self._schema)
            )
        table = pa.Table.from_batches(self._pending, schema=self._schema)
        self._parquet.write_table(table, row_group_size=max(table.num_rows, 1))
        self._rows += table.num_rows
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def _ndjson(self, chunk: pa.RecordBatch) -> None:
        if self._handle is None:
            self._open()
            # mtime=0: the same records give byte-identical files.
            self._gzip = gzip.GzipFile(fileobj=self._handle, mode="wb", mtime=0)
        assert self._gzip is not None
        lines = [dumps(record).encode("utf-8") for record in chunk.to_pylist()]
        self._gzip.write(b"\n".join(lines) + b"\n")
        self._rows += chunk.num_rows

    def _finish_part(self) -> None:
        self._flush()
        if self._handle is None:
            return
        if self._parquet is not None:
            self._parquet.close()
        if self._gzip is not None:
            self._gzip.close()
        self._handle.close()
        self.parts.append((self._path, self._rows, self.stage.fs.size(self._path)))
        self._handle, self._parquet, self._gzip = None, None, None

    def close(self) -> list[tuple[str, int, int]]:
        """Every part, complete; an empty batch still gets one (empty) file."""
        self._finish_part()
        if not self.parts:
            self._open()
            if self.format == "parquet":
                pq.ParquetWriter(self._handle, self._schema or pa.schema([])).close()
            else:
                gzip.GzipFile(fileobj=self._handle, mode="wb", mtime=0).close()
            self._handle.close()
            self.parts.append((self._path, 0, self.stage.fs.size(self._path)))
            self._handle = None
        return self.parts

    def abort(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(Exception):  # the original error matters more
                self._handle.close()
            self.parts.append((self._path, 0, 0))
        for path, _, _ in self.parts:
            self.stage._discard(path)


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The Parquet column paths worth dictionary-encoding: text and bytes, which repeat (an
    event name, a country). Numbers and instants mostly do not: their dictionaries grow to the
    page limit and are thrown away, which made the write a third slower and the file bigger."""
    paths: list[str] = []

    def walk(prefix: str, kind: pa.DataType) -> None:
        if pa.types.is_struct(kind):
            for index in range(kind.num_fields):
                child = kind.field(index)
                walk(f"{prefix}.{child.name}", child.type)
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            walk(f"{prefix}.list.element", kind.value_type)
        elif (
            pa.types.is_string(kind)
            or pa.types.is_large_string(kind)
            or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)
            or pa.types.is_dictionary(kind)
        ):
            paths.append(prefix)

    for item in schema:
        walk(item.name, item.type)
    return paths


def _ndjson_batches(handle: IO[bytes]) -> Iterator[pa.RecordBatch]:
    """NDJSON.gz back as record batches, parsed a block of lines at a time (bounded memory;
    each block infers its own schema, which the target merges)."""
    with gzip.GzipFile(fileobj=handle, mode="rb") as packed:
        while True:
            block = packed.read(_NDJSON_BLOCK)
            if not block:
                return
            rest = packed.readline()  # finish the last line of the block
            block += rest
            if block.strip():
                options = pa_json.ReadOptions(block_size=max(len(block), 1 << 20))
                yield from pa_json.read_json(io.BytesIO(block), read_options=options).to_batches(CHUNK_ROWS)
