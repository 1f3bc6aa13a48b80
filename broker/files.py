"""Files (the OpenAI Files API): content in a file store, metadata in Redis.

Two parts, each replaceable on its own:

- ``FileStore``: where the bytes live. ``LocalFileStore`` keeps each file at ``<data_dir>/files/<id>``
  (one machine, or a shared volume); an object store (S3, GCS, MinIO) implements the same three
  coroutines. Content is written in chunks as it arrives and becomes visible only once complete.
- ``FileCatalog``: one ``FileRecord`` per file (the hash ``sluice:file:<id>``) and the listing indexes
  (``sluice:files``, ``sluice:files:purpose:<purpose>``), in Redis.

``Files`` joins them and keeps the rule that a refused or failed upload leaves neither content nor
metadata: content is stored first under a fresh id (``store``), then the metadata makes it visible
(``commit``); a failure in between deletes the content. A crash between the two leaves only an
unlisted file in the store (no record points to it).
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterable, AsyncIterator, Literal, Mapping, Protocol

import anyio

from broker.paging import IndexPager, UnknownCursor  # noqa: F401  (UnknownCursor: the Files API's too)
from core import keys

FILE_RECORD_VERSION = 1
# Purposes Sluice keeps: `batch` files are uploaded by clients, `batch_output` files are written by Sluice.
PURPOSES = ("batch", "batch_output")
UPLOAD_PURPOSES = ("batch",)
LIST_LIMIT_MAX = 10_000  # OpenAI's bound (and default) for `limit` when listing files
CHUNK_BYTES = 1 << 20  # the local store's write buffer and read chunk


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


# --- metadata ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileRecord:
    """One file's metadata: the OpenAI file object's fields, plus its line count."""

    id: str
    bytes: int
    created_at: float
    filename: str
    purpose: str
    # Newline-separated lines, a last line without a newline included (counted at upload: a batch's size).
    lines: int = 0
    # OpenAI's (deprecated) file status: Sluice has nothing to process after the upload, so "processed".
    status: Literal["uploaded", "processed", "error"] = "processed"
    # The tenant whose API key uploaded it (a batch's output: the batch's); None with authentication off.
    owner: str | None = None
    version: int = FILE_RECORD_VERSION

    def to_openai(self) -> dict:
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": int(self.created_at),
                "filename": self.filename, "purpose": self.purpose, "status": self.status,
                "expires_at": None, "status_details": None}

    def to_redis(self) -> dict[str, str]:
        return {item.name: str(getattr(self, item.name)) for item in dataclasses.fields(self)
                if getattr(self, item.name) is not None}

    @classmethod
    def from_redis(cls, raw: Mapping) -> "FileRecord":
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return cls(id=fields["id"], bytes=int(fields["bytes"]), created_at=float(fields["created_at"]),
                   filename=fields.get("filename", ""), purpose=fields["purpose"],
                   lines=int(fields.get("lines", 0)), status=fields.get("status", "processed"),
                   owner=fields.get("owner") or None,
                   version=int(fields.get("version", FILE_RECORD_VERSION)))


@dataclass(frozen=True)
class FilePage:
    records: list[FileRecord]
    has_more: bool


class FileCatalog:
    """File metadata in Redis (asyncio client). Listing order is creation time, then id."""

    def __init__(self, client):
        self.client = client
        self._pager = IndexPager(client)

    async def add(self, record: FileRecord) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(keys.file_key(record.id), mapping=record.to_redis())
            pipe.zadd(keys.FILES, {record.id: record.created_at})
            pipe.zadd(keys.files_by_purpose_key(record.purpose), {record.id: record.created_at})
            if record.owner is not None:
                pipe.zadd(keys.files_index_key(record.owner), {record.id: record.created_at})
                pipe.zadd(keys.files_index_key(record.owner, record.purpose), {record.id: record.created_at})
            await pipe.execute()

    async def get(self, file_id: str) -> FileRecord | None:
        raw = await self.client.hgetall(keys.file_key(file_id))
        return FileRecord.from_redis(raw) if raw else None

    async def remove(self, file_id: str, owner: str | None = None) -> bool:
        """Forget a file (idempotent); whether it was there.  ``owner``: its record's, to leave its listing."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(keys.file_key(file_id))
            pipe.zrem(keys.FILES, file_id)
            for purpose in PURPOSES:
                pipe.zrem(keys.files_by_purpose_key(purpose), file_id)
            if owner is not None:
                pipe.zrem(keys.files_index_key(owner), file_id)
                for purpose in PURPOSES:
                    pipe.zrem(keys.files_index_key(owner, purpose), file_id)
            deleted, *_ = await pipe.execute()
        return bool(deleted)

    async def page(self, *, purpose: str | None = None, limit: int = LIST_LIMIT_MAX, after: str | None = None,
                   order: Literal["asc", "desc"] = "desc", owner: str | None = None) -> FilePage:
        """A page of the files of ``owner`` (every file's when None)."""
        if purpose is not None and purpose not in PURPOSES:
            return FilePage([], False)  # no file can have it
        index = keys.files_index_key(owner, purpose)
        ids, has_more = await self._pager.ids(index, limit=limit, after=after, order=order)
        async with self.client.pipeline(transaction=False) as pipe:
            for file_id in ids:
                pipe.hgetall(keys.file_key(file_id))
            raws = await pipe.execute()
        # A file deleted between the two reads is left out.
        return FilePage([FileRecord.from_redis(raw) for raw in raws if raw], has_more)


# --- upload limits (pure) -----------------------------------------------------------------------------
@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    max_lines: int


class UploadRefused(ValueError):
    pass


class FileTooLarge(UploadRefused):
    pass


class TooManyLines(UploadRefused):
    pass


class UploadMeter:
    """Counts a stream's bytes and lines as it passes and stops it as soon as it is over a limit."""

    def __init__(self, limits: UploadLimits | None):
        self.limits = limits
        self.bytes = 0
        self.newlines = 0
        self._ends_with_newline = True

    @property
    def lines(self) -> int:
        return self.newlines + (0 if self._ends_with_newline else 1)

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.bytes += len(chunk)
        self.newlines += chunk.count(b"\n")
        self._ends_with_newline = chunk.endswith(b"\n")
        if self.limits is None:
            return
        if self.bytes > self.limits.max_bytes:
            raise FileTooLarge(f"the file is larger than the limit of {self.limits.max_bytes} bytes")
        if self.newlines > self.limits.max_lines:
            raise TooManyLines(f"the file has more than the limit of {self.limits.max_lines} lines")

    def finish(self) -> None:
        if self.limits is not None and self.lines > self.limits.max_lines:
            raise TooManyLines(f"the file has more than the limit of {self.limits.max_lines} lines")

    async def metered(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self.feed(chunk)
            yield chunk
        self.finish()


# --- content ------------------------------------------------------------------------------------------
class FileStore(Protocol):
    """Where file content lives. Names are file ids (letters, digits, `-`, `_`, `.`)."""

    async def put(self, name: str, chunks: AsyncIterable[bytes]) -> int:
        """Store ``chunks`` as ``name`` and return the stored size. The content is visible to ``open``
        only once complete; if ``chunks`` raises (or the task is cancelled), nothing is stored and the
        error propagates."""

    async def open(self, name: str) -> AsyncIterator[bytes]:
        """The content in chunks. Raises ``FileNotFoundError`` (before the first chunk) when there is none."""

    async def delete(self, name: str) -> bool:
        """Remove the content; whether there was any."""


_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def _write_and_sync(handle, data: bytes | None) -> None:
    if data:
        handle.write(data)
    if data is None:
        handle.flush()
        os.fsync(handle.fileno())


def _rename_durably(source: Path, target: Path) -> None:
    os.replace(source, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut before the metadata points to it
    finally:
        os.close(directory)


class LocalFileStore:
    """One file per name under ``root`` (``<data_dir>/files``). Written to ``.partial-*`` and renamed
    into place once complete and fsynced, so a reader never sees half a file; a ``.partial-*`` file
    older than the longest upload is a leftover of a crashed process and may be deleted."""

    def __init__(self, root: Path, *, chunk_bytes: int = CHUNK_BYTES):
        self.root = Path(root)
        self.chunk_bytes = chunk_bytes

    def path(self, name: str) -> Path:
        if not _SAFE_NAME.fullmatch(name):
            raise ValueError(f"not a file store name: {name!r}")
        return self.root / name

    async def put(self, name: str, chunks: AsyncIterable[bytes]) -> int:
        final = self.path(name)
        partial = self.root / f".partial-{name}-{secrets.token_hex(4)}"
        await anyio.to_thread.run_sync(lambda: self.root.mkdir(parents=True, exist_ok=True))
        handle = await anyio.to_thread.run_sync(open, partial, "xb")
        size = 0
        buffer = bytearray()
        try:
            async for chunk in chunks:
                size += len(chunk)
                buffer += chunk
                if len(buffer) >= self.chunk_bytes:
                    await anyio.to_thread.run_sync(_write_and_sync, handle, bytes(buffer))
                    buffer.clear()
            await anyio.to_thread.run_sync(_write_and_sync, handle, bytes(buffer))
            await anyio.to_thread.run_sync(_write_and_sync, handle, None)
            handle.close()
            await anyio.to_thread.run_sync(_rename_durably, partial, final)
        except BaseException:
            handle.close()
            partial.unlink(missing_ok=True)
            raise
        return size

    async def open(self, name: str) -> AsyncIterator[bytes]:
        handle = await anyio.to_thread.run_sync(open, self.path(name), "rb")
        return self._chunks(handle)

    async def _chunks(self, handle) -> AsyncIterator[bytes]:
        try:
            while chunk := await anyio.to_thread.run_sync(handle.read, self.chunk_bytes):
                yield chunk
        finally:
            handle.close()

    async def delete(self, name: str) -> bool:
        try:
            await anyio.to_thread.run_sync(self.path(name).unlink)
        except FileNotFoundError:
            return False
        return True


# --- both ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StagedFile:
    """Content stored under a fresh id that no record points to yet."""

    id: str
    bytes: int
    lines: int


class Files:
    """The Files API's operations over a store and a catalog."""

    def __init__(self, store: FileStore, catalog: FileCatalog):
        self.store = store
        self.catalog = catalog

    async def stage(self, chunks: AsyncIterable[bytes], limits: UploadLimits | None = None) -> StagedFile:
        """Store content under a new id, counting bytes and lines. Over a limit: ``FileTooLarge`` or
        ``TooManyLines``; any error (those, one ``chunks`` raises, cancellation) leaves nothing stored."""
        file_id = new_file_id()
        meter = UploadMeter(limits)
        size = await self.store.put(file_id, meter.metered(chunks))
        return StagedFile(file_id, size, meter.lines)

    async def commit(self, staged: StagedFile, *, filename: str, purpose: str, now: float,
                     owner: str | None = None) -> FileRecord:
        """Make staged content a listed file. A failure here deletes the content."""
        try:
            if purpose not in PURPOSES:
                raise ValueError(f"unknown file purpose {purpose!r}")
            record = FileRecord(id=staged.id, bytes=staged.bytes, created_at=now, filename=filename,
                                purpose=purpose, lines=staged.lines, owner=owner)
            await self.catalog.add(record)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.store.delete(staged.id)
            raise
        return record

    async def create(self, chunks: AsyncIterable[bytes], *, filename: str, purpose: str, now: float,
                     limits: UploadLimits | None = None, owner: str | None = None) -> FileRecord:
        """Store and list a file in one call (what Sluice uses for the files it writes itself)."""
        return await self.commit(await self.stage(chunks, limits), filename=filename, purpose=purpose, now=now,
                                 owner=owner)

    async def get(self, file_id: str) -> FileRecord | None:
        return await self.catalog.get(file_id)

    async def open(self, file_id: str) -> tuple[FileRecord, AsyncIterator[bytes]] | None:
        """A file's record and content, or None when there is no such file (or it was deleted meanwhile)."""
        record = await self.catalog.get(file_id)
        if record is None:
            return None
        try:
            return record, await self.store.open(file_id)
        except FileNotFoundError:
            if await self.catalog.get(file_id) is None:
                return None  # deleted between the two reads
            raise

    async def delete(self, file_id: str, owner: str | None = None) -> bool:
        """Forget the record first (the file disappears at once), then remove the content."""
        if not await self.catalog.remove(file_id, owner):
            return False
        await self.store.delete(file_id)
        return True

    async def page(self, **query) -> FilePage:
        return await self.catalog.page(**query)
