"""A streaming multipart/form-data reader: text fields whole, a file part's bytes as they arrive.

Starlette's ``request.form()`` spools every file part to a temporary file before the route sees it,
so a 200 MB upload would be written twice and its limits checked only once it has all arrived. This
reader hands the route each part in order, and a file part's content chunk by chunk, so the route can
write it straight to the file store and refuse it at the first byte over a limit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

MAX_FIELD_BYTES = 64 * 1024  # a text field (`purpose`) is a word, not a document


class MultipartError(ValueError):
    """The body is not a well-formed multipart/form-data body."""


@dataclass(frozen=True)
class FormField:
    name: str
    value: str


@dataclass(frozen=True)
class FilePart:
    """A part with a filename; its content follows, read with ``MultipartReader.file_data``."""

    name: str
    filename: str


_PART_END = object()


class MultipartReader:
    def __init__(self, content_type: str | None, body: AsyncIterator[bytes], *, max_field_bytes: int = MAX_FIELD_BYTES):
        media_type, options = parse_options_header(content_type)
        if media_type != b"multipart/form-data" or not options.get(b"boundary"):
            raise MultipartError("the body must be multipart/form-data (with a boundary)")
        self._body = body.__aiter__()
        self._max_field_bytes = max_field_bytes
        self._events: deque = deque()
        self._body_ended = False
        self._complete = False  # the closing boundary was seen
        self._in_file = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._field: bytearray | None = None
        self._part_name = ""
        self.received_bytes = 0
        try:
            self._parser = MultipartParser(options[b"boundary"], {
                "on_part_begin": self._on_part_begin, "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value, "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished, "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end, "on_end": self._on_end,
            })
        except FormParserError as exc:
            raise MultipartError(str(exc)) from None

    # --- parser callbacks (called inside MultipartParser.write) ---------------------------------------
    def _on_part_begin(self) -> None:
        self._disposition = b""
        self._field = None

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise MultipartError("a part has no Content-Disposition name")
        self._part_name = _decode(options[b"name"])
        if b"filename" in options:
            # Keep the name only: a client may send a path, which means nothing here.
            filename = _decode(options[b"filename"]).replace("\\", "/").rsplit("/", 1)[-1]
            self._events.append(FilePart(self._part_name, filename))
        else:
            self._field = bytearray()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._field is None:
            self._events.append(data[start:end])
            return
        if len(self._field) + end - start > self._max_field_bytes:
            raise MultipartError(f"the field {self._part_name!r} is longer than {self._max_field_bytes} bytes")
        self._field += data[start:end]

    def _on_part_end(self) -> None:
        if self._field is None:
            self._events.append(_PART_END)
        else:
            self._events.append(FormField(self._part_name, _decode(bytes(self._field))))

    def _on_end(self) -> None:
        self._complete = True

    # --- reading --------------------------------------------------------------------------------------
    async def _next_event(self):
        while not self._events:
            if self._body_ended:
                return None
            try:
                chunk = await self._body.__anext__()
            except StopAsyncIteration:
                self._body_ended = True
                if not self._complete:
                    raise MultipartError("the multipart body ended before its closing boundary") from None
                continue
            self.received_bytes += len(chunk)
            if chunk:
                try:
                    self._parser.write(chunk)
                except FormParserError as exc:
                    raise MultipartError(str(exc)) from None
        return self._events.popleft()

    async def next_part(self) -> FormField | FilePart | None:
        """The next field or file part, or None at the end of the body. The content of a file part
        that was not read with ``file_data`` is skipped."""
        while True:
            event = await self._next_event()
            if event is None or isinstance(event, FormField):
                return event
            if isinstance(event, FilePart):
                self._in_file = True
                return event
            if event is _PART_END:
                self._in_file = False
            # else: content of a file part nobody read

    async def file_data(self) -> AsyncIterator[bytes]:
        """The current file part's content, chunk by chunk, up to the end of the part."""
        while self._in_file:
            event = await self._next_event()
            if event is _PART_END or event is None:
                self._in_file = False
            elif isinstance(event, bytes):
                if event:
                    yield event
            else:  # cannot happen: parts do not nest
                raise MultipartError("a part began inside a file part")

    async def drain(self, max_bytes: int) -> None:
        """Read (and drop) the rest of the body, up to ``max_bytes`` received in all, so a client that is
        still sending reads the error instead of a reset connection."""
        if self._body_ended:
            return
        try:
            while self.received_bytes <= max_bytes:
                chunk = await self._body.__anext__()
                self.received_bytes += len(chunk)
        except (StopAsyncIteration, ClientDisconnect):
            pass
        self._body_ended = True


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise MultipartError("a field name or value is not UTF-8") from None
