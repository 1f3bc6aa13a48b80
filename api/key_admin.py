"""Key management over HTTP, for admin keys only: create, list and revoke API keys (broker/api_keys.py).

`sluice keys ...` does the same straight against Redis (how the first admin key is made).
"""

from __future__ import annotations

import json
import time
from typing import Awaitable, Callable

from fastapi import APIRouter, Depends, Request

from api.auth import Caller
from api.errors import APIError, bad_request
from broker.api_keys import ApiKeyStore, UnknownKeyId

FIELDS = {"tenant", "lanes", "rpm", "tpm", "admin", "weight"}


def key_admin_router(store: Callable[[], ApiKeyStore], admin: Callable[[Request], Awaitable[Caller]]) -> APIRouter:
    router = APIRouter(dependencies=[Depends(admin)])

    @router.post("/v1/sluice/keys")
    async def create_key(request: Request):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict) or not isinstance(body.get("tenant"), str):
            raise bad_request("send a JSON object with at least 'tenant' (a string)", param="tenant",
                              code="invalid_value")
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise bad_request(f"unknown field(s) {unknown}; known: {sorted(FIELDS)}", code="invalid_value")
        try:
            key, record = await store().create(now=time.time(), **body)
        except (TypeError, ValueError) as exc:
            raise bad_request(f"invalid key settings: {exc}", code="invalid_value") from None
        return {"object": "sluice.api_key", "key": key, **record.describe()}

    @router.get("/v1/sluice/keys")
    async def list_keys():
        return {"object": "list", "data": [record.describe() for record in await store().list()]}

    @router.delete("/v1/sluice/keys/{key_id}")
    async def revoke_key(key_id: str):
        try:
            record = await store().revoke(key_id)
        except UnknownKeyId:
            raise APIError(404, f"no API key with id {key_id!r}", param="key_id", code="key_not_found") from None
        return {"id": record.key_id, "object": "sluice.api_key", "deleted": True}

    return router
