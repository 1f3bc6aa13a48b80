"""The OpenAI Files API: upload, retrieve, download, delete and list files (broker/files.py keeps them).

An upload streams from the request body to the file store (api/multipart.py), counting bytes and
lines as it goes; a file over ``batch_file_max_bytes`` gets 413 and one over ``batch_file_max_lines``
400, as soon as the limit is passed, and neither leaves a file or a record behind.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from api.auth import Caller, owns, tenant_of
from api.errors import APIError, bad_request
from api.listing import limit_param, list_object
from api.multipart import FilePart, FormField, MultipartError, MultipartReader
from broker.files import (LIST_LIMIT_MAX, UPLOAD_PURPOSES, FileRecord, Files, FileTooLarge, TooManyLines,
                          UnknownCursor, UploadLimits)
from core.settings import Settings

# Room for the multipart framing and the text fields around the file itself.
BODY_OVERHEAD_BYTES = 1 << 20
# A refused upload's body is still read (and dropped) up to this many times the largest accepted body,
# so a client that sends the whole body before reading the answer gets the 4xx and not a reset
# connection; past that, the connection is closed under it.
DRAIN_FACTOR = 2


def missing(param: str) -> APIError:
    return bad_request(f"Missing required parameter: {param!r}.", param=param, code="missing_required_parameter")


def no_such_file(file_id: str) -> APIError:
    return APIError(404, f"No such File object: {file_id}", param="file_id", code="file_not_found")


def check_upload_purpose(purpose: str) -> None:
    if purpose not in UPLOAD_PURPOSES:
        raise bad_request(f"{purpose!r} is not one of {list(UPLOAD_PURPOSES)} - 'purpose'", param="purpose",
                          code="invalid_value")


def too_large(limit: int) -> APIError:
    return APIError(413, f"the file is larger than the limit of {limit} bytes (batch_file_max_bytes)",
                    param="file", code="file_too_large")


async def no_auth(_request: Request) -> Caller:
    return None


async def owned_file(files: Files, file_id: str, caller: Caller) -> FileRecord:
    """The caller's file of that id; 404 when there is none, or it is another tenant's."""
    record = await files.get(file_id)
    if record is None or not owns(caller, record.owner):
        raise no_such_file(file_id)
    return record


def files_router(settings: Settings, files: Callable[[], Files],
                 used_by: Callable[[str], Awaitable[str | None]] | None = None,
                 caller: Callable[[Request], Awaitable[Caller]] = no_auth) -> APIRouter:
    """The routes; ``files`` returns the running API's ``Files`` (built at start-up); ``used_by(file_id)`` the
    open batch that reads the file, if one does (its output is written from it, so it cannot go yet);
    ``caller`` the dependency that resolves the caller's key (api/auth.py)."""
    router = APIRouter()
    who = Depends(caller)
    limits = UploadLimits(settings.batch_file_max_bytes, settings.batch_file_max_lines)
    body_limit = limits.max_bytes + BODY_OVERHEAD_BYTES
    drain_limit = DRAIN_FACTOR * body_limit

    @router.post("/v1/files")
    async def create_file(request: Request, me: Caller = who):
        try:
            reader = MultipartReader(request.headers.get("content-type"), request.stream())
        except MultipartError as exc:
            raise bad_request(f"{exc}; send the fields 'file' and 'purpose'", code="invalid_multipart") from None
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > body_limit:
            if int(declared) <= drain_limit:
                await reader.drain(drain_limit)
            raise too_large(limits.max_bytes)  # refused without storing a byte
        try:
            record = await receive(reader, files(), tenant_of(me))
        except ClientDisconnect:
            # Nothing was stored (stage() cleans up) and nobody reads this answer; no traceback for it.
            raise bad_request("the client disconnected during the upload", code="client_disconnected") from None
        except (APIError, MultipartError, FileTooLarge, TooManyLines) as exc:
            await reader.drain(drain_limit)
            if isinstance(exc, MultipartError):
                raise bad_request(str(exc), code="invalid_multipart") from None
            if isinstance(exc, FileTooLarge):
                raise too_large(limits.max_bytes) from None
            if isinstance(exc, TooManyLines):
                raise bad_request(f"{exc} (batch_file_max_lines)", param="file", code="too_many_lines") from None
            raise
        return record.to_openai()

    async def receive(reader: MultipartReader, files: Files, owner: str | None) -> FileRecord:
        fields: dict[str, str] = {}

        def take(field: FormField) -> None:
            if field.name == "file":
                raise bad_request("'file' must be a file, not a text field", param="file", code="invalid_value")
            fields[field.name] = field.value
            if field.name == "purpose":
                check_upload_purpose(field.value)  # refused before the file is read when it comes first

        while True:
            part = await reader.next_part()
            if part is None:
                raise missing("file")
            if isinstance(part, FormField):
                take(part)
                continue
            if part.name != "file":
                raise bad_request(f"unexpected file field {part.name!r}: the file goes in 'file'", param="file",
                                  code="invalid_value")
            break
        filename = part.filename

        async def content():
            async for chunk in reader.file_data():
                yield chunk
            # The fields after the file: a refusal here still leaves nothing stored (stage() cleans up).
            while (rest := await reader.next_part()) is not None:
                if isinstance(rest, FilePart):
                    raise bad_request("one file per upload", param="file", code="invalid_value")
                take(rest)
            if "purpose" not in fields:
                raise missing("purpose")

        staged = await files.stage(content(), limits)
        return await files.commit(staged, filename=filename, purpose=fields["purpose"], now=time.time(),
                                  owner=owner)

    @router.get("/v1/files")
    async def list_files(request: Request, me: Caller = who):
        query = request.query_params
        limit = limit_param(query, default=LIST_LIMIT_MAX, maximum=LIST_LIMIT_MAX)
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise bad_request(f"{order!r} is not one of ['asc', 'desc'] - 'order'", param="order",
                              code="invalid_value")
        after = query.get("after") or None
        try:
            page = await files().page(purpose=query.get("purpose") or None, limit=limit, after=after,
                                      order=order, owner=tenant_of(me))
        except UnknownCursor:
            raise bad_request(f"after: no file {after!r} in this listing", param="after", code="invalid_value") from None
        return list_object([record.to_openai() for record in page.records], page.has_more)

    @router.get("/v1/files/{file_id}")
    async def retrieve_file(file_id: str, me: Caller = who):
        return (await owned_file(files(), file_id, me)).to_openai()

    @router.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, me: Caller = who):
        await owned_file(files(), file_id, me)
        opened = await files().open(file_id)
        if opened is None:
            raise no_such_file(file_id)
        record, chunks = opened
        return StreamingResponse(chunks, media_type="application/octet-stream",
                                 headers={"Content-Length": str(record.bytes)})

    @router.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, me: Caller = who):
        record = await owned_file(files(), file_id, me)
        batch_id = await used_by(file_id) if used_by is not None else None
        if batch_id is not None:
            raise APIError(409, f"the file is the input of batch {batch_id}, which has not ended; delete it once the "
                           "batch has (or cancel the batch)", param="file_id", code="file_in_use")
        if not await files().delete(file_id, record.owner):
            raise no_such_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    return router
