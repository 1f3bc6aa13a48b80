"""Who is calling: the API key of ``Authorization: Bearer <key>`` (docs/security.md).

``Auth.caller`` is a FastAPI dependency: with authentication on it answers 401 (OpenAI's error object,
``WWW-Authenticate: Bearer``) for a missing, malformed, unknown or revoked key and returns the key's
record; with it off it returns None, and every check below lets the call through.  The key itself is
never logged; the key id (a digest prefix) may be.

Ownership: a request, its answer, a file and a batch belong to the tenant whose key created them.
``owns`` is the one test; a thing of another tenant is answered like one that does not exist (404),
so an id tells nothing about someone else's work.
"""

from __future__ import annotations

import logging
import math
import time

from fastapi import Request

from api.errors import APIError
from broker.api_keys import ApiKeyRecord, ApiKeyStore
from broker.quotas import Limit, Quotas
from broker.messages import GenerationRequest

log = logging.getLogger(__name__)

Caller = ApiKeyRecord | None


def unauthorized(message: str, code: str | None) -> APIError:
    return APIError(401, message, code=code, headers={"WWW-Authenticate": "Bearer"})


def bearer_token(header: str | None) -> str:
    """The key of an Authorization header; 401 when there is none or it is not ``Bearer <key>``."""
    if not header:
        raise unauthorized("You didn't provide an API key. You need to provide your API key in an Authorization "
                           "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", None)
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("The Authorization header must be 'Bearer YOUR_KEY'.", "invalid_api_key")
    return token.strip()


def owns(caller: Caller, owner: str | None) -> bool:
    """Whether the caller may see a thing owned by ``owner`` (always, with authentication off)."""
    return caller is None or owner == caller.tenant


def tenant_of(caller: Caller) -> str | None:
    return caller.tenant if caller is not None else None


def require_admin(caller: Caller) -> None:
    if caller is not None and not caller.admin:
        raise APIError(403, "This endpoint needs an admin key (sluice keys create --admin).", code="admin_required")


def quota_limits(caller: ApiKeyRecord, request: GenerationRequest) -> dict[str, Limit]:
    """What a request costs against its key's quotas: one request, and prompt + max_tokens tokens."""
    limits = {}
    if caller.rpm is not None:
        limits["requests"] = Limit(caller.rpm, 1)
    if caller.tpm is not None:
        limits["tokens"] = Limit(caller.tpm, request.prompt_tokens + request.sampling.max_tokens)
    return limits


class Auth:
    def __init__(self, enabled: bool, client):
        self.enabled = enabled
        self.keys = ApiKeyStore(client)
        self.quotas = Quotas(client)

    async def caller(self, request: Request) -> Caller:
        """The FastAPI dependency: the caller's key record (None with authentication off)."""
        if not self.enabled:
            return None
        record = await self.keys.lookup(bearer_token(request.headers.get("authorization")))
        if record is None:
            raise unauthorized("Incorrect API key provided (unknown, revoked or malformed). Keys are made with "
                               "`sluice keys create`.", "invalid_api_key")
        return record

    async def admin(self, request: Request) -> Caller:
        """The dependency of admin endpoints: 401 without a key, 403 with a key that is not an admin's."""
        caller = await self.caller(request)
        require_admin(caller)
        return caller

    async def admit(self, caller: Caller, request: GenerationRequest) -> None:
        """Stamp the request with its tenant; 403 for a lane the key may not use, 429 over a quota."""
        if caller is None:
            return
        request.tenant = caller.tenant
        request.tenant_weight = caller.weight
        if not caller.may_use(request.slo):
            raise APIError(403, f"This API key may not use the {request.slo!r} lane (it may use "
                           f"{', '.join(caller.lanes)}).", param="slo", code="lane_not_allowed")
        limits = quota_limits(caller, request)
        verdict = await self.quotas.charge(caller.digest, limits, time.time())
        if verdict.allowed:
            return
        if math.isinf(verdict.wait_s):
            raise APIError(429, f"The request needs {limits['tokens'].cost:.0f} tokens (prompt + max_tokens), more "
                           f"than this key's quota of {caller.tpm} tokens per minute; lower max_tokens.",
                           type="tokens", code="request_too_large_for_quota")
        log.info("key %s (tenant %s) over its quota: retry in %.2f s", caller.key_id, caller.tenant, verdict.wait_s)
        raise APIError(429, f"Rate limit reached for this API key (requests per minute {caller.rpm or '-'}, tokens "
                       f"per minute {caller.tpm or '-'}); retry in {verdict.wait_s:.2f} s.",
                       type="requests", code="rate_limit_exceeded",
                       headers={"Retry-After": str(verdict.retry_after_s)})
