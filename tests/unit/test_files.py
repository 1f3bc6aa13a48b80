"""The Files API's pure parts and the local file store: limits, the record's encoding, multipart streaming.

Real files under pytest's tmp_path; no Redis (tests/integration/test_files.py runs the API on a real one).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from api.multipart import FilePart, FormField, MultipartError, MultipartReader
from broker.files import (FileRecord, FileTooLarge, LocalFileStore, TooManyLines, UploadLimits, UploadMeter,
                          new_file_id)


def run(coroutine):
    return asyncio.run(coroutine)


async def chunks_of(data: bytes, size: int):
    for start in range(0, len(data), size):
        yield data[start:start + size]


def meter_over(data: bytes, limits: UploadLimits | None, chunk: int = 3) -> UploadMeter:
    meter = UploadMeter(limits)

    async def consume():
        async for _ in meter.metered(chunks_of(data, chunk)):
            pass

    run(consume())
    return meter


@pytest.mark.parametrize("data,lines", [(b"", 0), (b"a", 1), (b"a\n", 1), (b"a\nb", 2), (b"a\n\nb\n", 3),
                                        (b"\n", 1)])
def test_meter_counts_lines_a_last_line_without_newline_included(data, lines):
    meter = meter_over(data, None)
    assert (meter.bytes, meter.lines) == (len(data), lines)


def test_meter_accepts_exactly_the_limits_and_refuses_one_more():
    assert meter_over(b"ab\ncd\n", UploadLimits(max_bytes=6, max_lines=2)).lines == 2
    with pytest.raises(FileTooLarge):
        meter_over(b"ab\ncd\ne", UploadLimits(max_bytes=6, max_lines=9))
    with pytest.raises(TooManyLines):  # the third line has no newline: caught at the end
        meter_over(b"ab\ncd\ne", UploadLimits(max_bytes=99, max_lines=2))


def test_meter_stops_the_stream_at_the_first_chunk_over_a_limit():
    seen = []

    async def consume():
        async for chunk in UploadMeter(UploadLimits(max_bytes=10**9, max_lines=2)).metered(
                chunks_of(b"1\n2\n3\n" + b"x" * 1000, 2)):
            seen.append(chunk)

    with pytest.raises(TooManyLines):
        run(consume())
    assert b"".join(seen) == b"1\n2\n"  # the chunk with the third newline never passed


def test_file_record_round_trips_and_matches_openais_file_object():
    record = FileRecord(id=new_file_id(), bytes=12, created_at=1_700_000_000.7, filename="in.jsonl",
                        purpose="batch", lines=3)
    assert FileRecord.from_redis({k.encode(): v.encode() for k, v in record.to_redis().items()}) == record
    assert record.to_openai() == {"id": record.id, "object": "file", "bytes": 12, "created_at": 1_700_000_000,
                                  "filename": "in.jsonl", "purpose": "batch", "status": "processed",
                                  "expires_at": None, "status_details": None}
    assert record.id.startswith("file-") and record.id != new_file_id()


def test_local_store_puts_reads_and_deletes(tmp_path):
    store = LocalFileStore(tmp_path / "files", chunk_bytes=4)
    data = b'{"custom_id": "a"}\n' * 50

    async def scenario():
        assert await store.put("file-1", chunks_of(data, 7)) == len(data)
        read = b"".join([chunk async for chunk in await store.open("file-1")])
        deleted = await store.delete("file-1")
        return read, deleted, await store.delete("file-1")

    assert run(scenario()) == (data, True, False)
    with pytest.raises(FileNotFoundError):
        run(store.open("file-1"))
    assert list((tmp_path / "files").iterdir()) == []


def test_local_store_leaves_nothing_when_the_stream_fails(tmp_path):
    store = LocalFileStore(tmp_path, chunk_bytes=4)

    async def failing():
        yield b"0123456789"
        raise FileTooLarge("stop")

    with pytest.raises(FileTooLarge):
        run(store.put("file-2", failing()))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", ".hidden", ""])
def test_local_store_refuses_names_that_are_not_plain(tmp_path, name):
    with pytest.raises(ValueError):
        LocalFileStore(tmp_path).path(name)


def multipart_body(fields: list[tuple[str, str]], files: list[tuple[str, str, bytes]]) -> tuple[str, bytes]:
    """A body as httpx (the openai client's transport) encodes it: the text fields, then the files."""
    request = httpx.Request("POST", "http://x/v1/files", data=dict(fields),
                            files=[(name, (filename, content)) for name, filename, content in files])
    return request.headers["content-type"], request.read()


def read_all(content_type: str, body: bytes, chunk: int) -> list:
    async def scenario():
        reader = MultipartReader(content_type, chunks_of(body, chunk))
        parts = []
        while (part := await reader.next_part()) is not None:
            parts.append(part)
            if isinstance(part, FilePart):
                parts.append(b"".join([piece async for piece in reader.file_data()]))
        return parts

    return run(scenario())


@pytest.mark.parametrize("chunk", [1, 7, 65536])
def test_multipart_reader_streams_parts_in_order_at_any_chunking(chunk):
    content = b'{"a": 1}\r\n--not-the-boundary\n' * 20
    content_type, body = multipart_body([("purpose", "batch")], [("file", "dir/in.jsonl", content)])
    assert read_all(content_type, body, chunk) == [FormField("purpose", "batch"), FilePart("file", "in.jsonl"),
                                                   content]


def test_multipart_reader_refuses_truncated_bodies_and_other_content_types():
    content_type, body = multipart_body([("purpose", "batch")], [("file", "in.jsonl", b"x" * 100)])
    with pytest.raises(MultipartError, match="ended before"):
        read_all(content_type, body[:-20], 16)
    with pytest.raises(MultipartError, match="multipart/form-data"):
        MultipartReader("application/json", chunks_of(b"{}", 2))


def test_multipart_reader_bounds_text_fields():
    content_type, body = multipart_body([("purpose", "b" * 100)], [("file", "in.jsonl", b"{}")])
    with pytest.raises(MultipartError, match="longer than"):
        run(MultipartReader(content_type, chunks_of(body, 8), max_field_bytes=50).next_part())
