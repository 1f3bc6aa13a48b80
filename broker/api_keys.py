"""API keys: who a request comes from (its tenant), what it may use (lanes, admin) and its quotas.

A key is ``sk-sluice-`` + 43 random URL-safe characters (256 bits), shown once when it is made.  Redis
keeps only its SHA-256 (``sluice:apikey:<sha256 hex>``, one :class:`ApiKeyRecord`), so a copy of the
database gives no key.  A lookup hashes the presented key and reads that hash: no comparison of secrets
happens in Python, so there is nothing to time.  The first 12 hex digits of the digest are the key's *id*:
what `sluice keys list` shows and `revoke` takes, and what logs may name.  Revoking deletes the record and
the key's buckets: the next request with it gets 401.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Mapping

from broker.records import hash_fields
from core import keys
from core.names import SLO_CLASSES

API_KEY_RECORD_VERSION = 1
KEY_PREFIX = "sk-sluice-"
# The key's random part: secrets.token_urlsafe(32) is 43 characters of [A-Za-z0-9_-].
_KEY_FORMAT = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]{43}")
KEY_ID_LENGTH = 12
# Tenant names appear in Redis key names and logs: plain words only.
TENANT_FORMAT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def well_formed(key: str) -> bool:
    """Whether ``key`` has the form of a Sluice key (a malformed one is refused without a Redis read)."""
    return bool(_KEY_FORMAT.fullmatch(key))


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_tenant(tenant: str) -> str:
    if not TENANT_FORMAT.fullmatch(tenant):
        raise ValueError(f"tenant {tenant!r}: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return tenant


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class ApiKeyRecord:
    """One key's grants.  ``lanes`` None: every lane; ``rpm`` / ``tpm`` None: no such quota."""

    digest: str
    tenant: str
    created_at: float
    lanes: tuple[str, ...] | None = None
    rpm: int | None = None  # requests per minute (token bucket: burst of one minute's worth)
    tpm: int | None = None  # tokens per minute, a request costing prompt tokens + max_tokens
    admin: bool = False  # key management, the scaler's decisions, /metrics
    weight: float = 1.0  # the tenant's fair-share weight in the lanes (GenerationRequest.tenant_weight)
    version: int = API_KEY_RECORD_VERSION

    def __post_init__(self):
        check_tenant(self.tenant)
        if self.lanes is not None:
            unknown = [lane for lane in self.lanes if lane not in SLO_CLASSES]
            if unknown or not self.lanes:
                raise ValueError(f"lanes {list(self.lanes)}: name one or more of {list(SLO_CLASSES)}")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a whole number of at least 1 (leave it out for no limit)")
        if not isinstance(self.admin, bool):
            raise ValueError("admin must be true or false")
        if isinstance(self.weight, bool) or not self.weight > 0:
            raise ValueError("weight must be above 0")

    @property
    def key_id(self) -> str:
        return self.digest[:KEY_ID_LENGTH]

    def may_use(self, lane: str) -> bool:
        return self.lanes is None or lane in self.lanes

    def to_redis(self) -> dict[str, str]:
        return hash_fields(self)

    @classmethod
    def from_redis(cls, raw: Mapping) -> ApiKeyRecord:
        fields = {_text(k): _text(v) for k, v in raw.items()}

        def number(name, kind):
            return kind(fields[name]) if fields.get(name) not in (None, "") else None

        return cls(digest=fields["digest"], tenant=fields["tenant"], created_at=float(fields["created_at"]),
                   lanes=tuple(fields["lanes"].split(",")) if fields.get("lanes") else None,
                   rpm=number("rpm", int), tpm=number("tpm", int), admin=fields.get("admin") == "1",
                   weight=float(fields.get("weight", 1.0)),
                   version=int(fields.get("version", API_KEY_RECORD_VERSION)))

    def describe(self) -> dict:
        """What `sluice keys list` and the admin API show (never the key: it is not stored)."""
        return {"id": self.key_id, "tenant": self.tenant, "created_at": int(self.created_at),
                "lanes": list(self.lanes) if self.lanes is not None else None, "rpm": self.rpm, "tpm": self.tpm,
                "admin": self.admin, "weight": self.weight}


class UnknownKeyId(LookupError):
    pass


class ApiKeyStore:
    """Key records in Redis (asyncio client): the one writer of ``sluice:apikey:*``."""

    def __init__(self, client):
        self.client = client

    async def create(self, *, tenant: str, now: float, lanes=None, rpm: int | None = None, tpm: int | None = None,
                     admin: bool = False, weight: float = 1.0) -> tuple[str, ApiKeyRecord]:
        """A new key and its record; the key is returned once and stored nowhere."""
        key = new_key()
        record = ApiKeyRecord(digest=digest_of(key), tenant=tenant, created_at=now,
                              lanes=tuple(lanes) if lanes else None, rpm=rpm, tpm=tpm, admin=admin, weight=weight)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(keys.api_key_key(record.digest), mapping=record.to_redis())
            pipe.zadd(keys.API_KEYS, {record.digest: record.created_at})
            await pipe.execute()
        return key, record

    async def lookup(self, key: str) -> ApiKeyRecord | None:
        """The record of a presented key; None when it is malformed, unknown or revoked."""
        if not well_formed(key):
            return None
        raw = await self.client.hgetall(keys.api_key_key(digest_of(key)))
        return ApiKeyRecord.from_redis(raw) if raw else None

    async def list(self) -> list[ApiKeyRecord]:
        digests = [_text(d) for d in await self.client.zrange(keys.API_KEYS, 0, -1)]
        async with self.client.pipeline(transaction=False) as pipe:
            for digest in digests:
                pipe.hgetall(keys.api_key_key(digest))
            raws = await pipe.execute()
        return [ApiKeyRecord.from_redis(raw) for raw in raws if raw]

    async def revoke(self, key_id: str) -> ApiKeyRecord:
        """Revoke the key whose id (a digest prefix, at least ``KEY_ID_LENGTH`` hex digits) is ``key_id``."""
        key_id = key_id.lower()
        matches = [record for record in await self.list()
                   if len(key_id) >= KEY_ID_LENGTH and record.digest.startswith(key_id)]
        if len(matches) != 1:
            raise UnknownKeyId(key_id)
        record = matches[0]
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(keys.api_key_key(record.digest), keys.quota_key(record.digest))
            pipe.zrem(keys.API_KEYS, record.digest)
            await pipe.execute()
        return record
