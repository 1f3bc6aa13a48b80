"""The OpenAI Batches API: create, retrieve, list and cancel batches (broker/batches.py keeps them).

Creating a batch checks what can be checked at once (the body, the input file, the window) and answers
with the batch ``validating``; the batch runner (api/batch_runner.py) validates every line, enqueues the
requests and carries the batch to its end.  A cancel answers at once with the batch ``cancelling``.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

from fastapi import APIRouter, Depends, Request

from api.batch_input import ENDPOINT_BODIES, parse_completion_window
from api.errors import APIError, bad_request
from api.auth import Caller, owns
from api.files import missing, no_auth, owned_file
from api.limits import BodyLimits, decode_json, read_body
from api.listing import limit_param, list_object
from broker.batches import (CANCELLABLE, LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, BatchCounts, BatchRecord, BatchStatus,
                            BatchStore, TransitionRefused, new_batch_id)
from broker.files import Files
from broker.paging import UnknownCursor

# OpenAI's bounds on a batch's metadata.
METADATA_MAX_PAIRS = 16
METADATA_KEY_MAX = 64
METADATA_VALUE_MAX = 512


def no_such_batch(batch_id: str) -> APIError:
    return APIError(404, f"No batch found with id '{batch_id}'.", param="batch_id", code="batch_not_found")


def check_metadata(metadata: object) -> dict | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise bad_request("metadata must be an object of string keys and values", param="metadata",
                          code="invalid_value")
    if len(metadata) > METADATA_MAX_PAIRS:
        raise bad_request(f"metadata has {len(metadata)} keys; at most {METADATA_MAX_PAIRS}", param="metadata",
                          code="invalid_value")
    for key, value in metadata.items():
        if not isinstance(value, str) or len(key) > METADATA_KEY_MAX or len(value) > METADATA_VALUE_MAX:
            raise bad_request(f"metadata[{key!r}]: keys are strings of at most {METADATA_KEY_MAX} characters, "
                              f"values strings of at most {METADATA_VALUE_MAX}", param="metadata",
                              code="invalid_value")
    return metadata


# The body POST /v1/batches reads (by hand, for OpenAI's 400s), declared for clients and the schema fuzz.
CREATE_BATCH_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["input_file_id", "endpoint", "completion_window"],
    "properties": {"input_file_id": {"type": "string"}, "endpoint": {"type": "string", "enum": list(ENDPOINT_BODIES)},
                   "completion_window": {"type": "string", "example": "24h"},
                   "metadata": {"anyOf": [{"type": "object", "additionalProperties": {"type": "string"}},
                                          {"type": "null"}]}}}}}}}
LIST_QUERY = {"parameters": [
    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}},
    {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}}]}


def batches_router(store: Callable[[], BatchStore], files: Callable[[], Files], wake: Callable[[], None],
                   limits: BodyLimits, caller: Callable[[Request], Awaitable[Caller]] = no_auth) -> APIRouter:
    """The routes; ``store``, ``files`` and ``wake`` (the batch runner's) come from the running API; ``caller``
    resolves the caller's key (api/auth.py)."""
    router = APIRouter()
    who = Depends(caller)

    async def owned(batch_id: str, me: Caller) -> tuple[BatchRecord, BatchCounts]:
        """The caller's batch; 404 when there is none, or it is another tenant's."""
        found = await store().get(batch_id)
        if found is None or not owns(me, found[0].tenant):
            raise no_such_batch(batch_id)
        return found

    @router.post("/v1/batches", openapi_extra=CREATE_BATCH_BODY)
    async def create_batch(request: Request, me: Caller = who):
        body = decode_json(await read_body(request, limits), limits.max_json_depth)
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object", code="invalid_json")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if name not in body:
                raise missing(name)
        endpoint = body["endpoint"]
        if endpoint not in ENDPOINT_BODIES:
            raise bad_request(f"{endpoint!r} is not one of {list(ENDPOINT_BODIES)} - 'endpoint'", param="endpoint",
                              code="invalid_value")
        window_s = parse_completion_window(body["completion_window"])
        metadata = check_metadata(body.get("metadata"))
        input_file_id = body["input_file_id"]
        if not isinstance(input_file_id, str):
            raise bad_request("input_file_id must be a string", param="input_file_id", code="invalid_value")
        if me is not None and not me.may_use("batch"):
            raise APIError(403, "This API key may not use the 'batch' lane, where a batch's requests run.",
                           code="lane_not_allowed")
        record = await owned_file(files(), input_file_id, me)
        if record.purpose != "batch":
            raise bad_request(f"the file {input_file_id} has purpose {record.purpose!r}; a batch's input file "
                              "must be uploaded with purpose 'batch'", param="input_file_id", code="invalid_value")
        now = time.time()
        batch = BatchRecord(id=new_batch_id(), endpoint=endpoint, input_file_id=input_file_id,
                            completion_window=body["completion_window"], created_at=now, expires_at=now + window_s,
                            metadata=metadata, tenant=me.tenant if me else None,
                            tenant_weight=me.weight if me else 1.0)
        await store().create(batch)
        wake()
        return batch.to_openai(BatchCounts())

    @router.get("/v1/batches", openapi_extra=LIST_QUERY)
    async def list_batches(request: Request, me: Caller = who):
        query = request.query_params
        limit = limit_param(query, default=LIST_LIMIT_DEFAULT, maximum=LIST_LIMIT_MAX)
        after = query.get("after") or None
        try:
            page = await store().page(limit=limit, after=after, tenant=me.tenant if me else None)
        except UnknownCursor:
            raise bad_request(f"after: no batch {after!r}", param="after", code="invalid_value") from None
        return list_object([record.to_openai(counts) for record, counts in page.batches], page.has_more)

    @router.get("/v1/batches/{batch_id}")
    async def retrieve_batch(batch_id: str, me: Caller = who):
        record, counts = await owned(batch_id, me)
        return record.to_openai(counts)

    @router.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str, me: Caller = who):
        await owned(batch_id, me)
        try:
            await store().cancel(batch_id, time.time())
        except TransitionRefused as exc:
            if exc.status is None:
                raise no_such_batch(batch_id) from None
            if exc.status not in (BatchStatus.cancelling, BatchStatus.cancelled):  # cancelling again is a no-op
                raise APIError(409, f"the batch is {exc.status.value}; only a batch that is "
                               f"{' or '.join(s.value for s in CANCELLABLE)} can be cancelled",
                               param="batch_id", code="batch_not_cancellable") from None
        wake()
        record, counts = await store().get(batch_id)
        return record.to_openai(counts)

    return router
