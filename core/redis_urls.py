"""Redis URLs Sluice accepts: a plain server (``redis://``, ``rediss://``, ``unix://``) or a Sentinel group.

A Sentinel URL names the sentinels and the master's service name, and every Sluice client built
from it (core.redis_clients, the broker's transport) asks the sentinels for the current master, and
asks again after a failover::

    redis+sentinel://[[username]:password@]host1:26379[,host2:26379,...]/<service>[/<db>][?sentinel_password=...]

``sentinel://`` (kombu's scheme) is accepted as the same thing.  The user name and password are the
*master's* (Redis ``AUTH``); sentinels are contacted without a password unless ``sentinel_password``
is given.  A sentinel without a port is on 26379; ``db`` defaults to 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

SENTINEL_SCHEMES = ("redis+sentinel", "sentinel")
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    def master_kwargs(self) -> dict:
        """Connection arguments for the master (and, after a failover, the promoted replica)."""
        kwargs: dict = {"db": self.db}
        if self.username:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        return kwargs

    def sentinel_kwargs(self) -> dict:
        return {"password": self.sentinel_password} if self.sentinel_password is not None else {}

    def redacted(self) -> str:
        """The URL for logs: hosts and service, never a password."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service_name}/{self.db}"


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` URL (module docstring); ValueError says what is wrong."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower() not in SENTINEL_SCHEMES or not sep:
        raise ValueError(f"not a Sentinel URL (redis+sentinel://host:port,.../service/db): {_redact(url)}")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if not colon:  # redis://secret@host is a password with no user name, as redis-py reads it
            username, password = None, unquote(user)
    sentinels = []
    for host in filter(None, hosts.split(",")):
        name, colon, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        if not colon:
            name, port = host, ""
        name = name.strip("[]")
        try:
            sentinels.append((name, int(port) if port else DEFAULT_SENTINEL_PORT))
        except ValueError:
            raise ValueError(f"bad sentinel address {host!r} in {_redact(url)}") from None
    if not sentinels:
        raise ValueError(f"no sentinel host in {_redact(url)}: redis+sentinel://host:port,.../service/db")
    parts = [part for part in path.split("/") if part]
    if not parts or len(parts) > 2:
        raise ValueError(f"{_redact(url)} must name the master's service, and optionally a db: .../mymaster/0")
    try:
        db = int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        raise ValueError(f"db must be a number in {_redact(url)}") from None
    options = parse_qs(query)
    unknown = set(options) - {"sentinel_password"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} in {_redact(url)} (known: sentinel_password)")
    sentinel_password = options.get("sentinel_password", [None])[0]
    return SentinelURL(tuple(sentinels), unquote(parts[0]), db, username, password, sentinel_password)


def redact_url(url: str) -> str:
    """A Redis URL for logs: the password (of any scheme's URL) replaced by ``***``."""
    return _redact(url)


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, after = rest.rpartition("@")
    return f"{scheme}{sep}***@{after.split('?')[0]}" if at else url.split("?")[0]
