"""Redis URLs Sluice accepts (pure): a plain server (``redis://``, ``rediss://``, ``unix://``) or a Sentinel group;
TLS options for every client; a printable form without the password.

A Sentinel URL names the sentinels and the master's service name, and every Sluice client built
from it (core.redis_clients, the broker's transport) asks the sentinels for the current master, and
asks again after a failover::

    redis+sentinel://[[username]:password@]host1:26379[,host2:26379,...]/<service>[/<db>][?sentinel_password=...]

``sentinel://`` (kombu's scheme) is accepted as the same thing.  The user name and password are the
*master's* (Redis ``AUTH``); sentinels are contacted without a password unless ``sentinel_password``
is given.  A sentinel without a port is on 26379; ``db`` defaults to 0.

A ``rediss://`` URL is Redis over TLS.  redis-py reads it, with its TLS options, from the URL itself
(``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname`` in the
query), so ``core.redis_clients`` needs nothing more.  Celery's broker URL is Sluice's ``sluice://``
transport, which kombu does not know to be TLS: ``celery_tls`` takes the same options out of the URL and
returns them as Celery's ``broker_use_ssl``, so the API's publisher, the workers' consumers, Flower and
the scaler's control client all use the options the plain Redis clients use.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

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


TLS_SCHEME = "rediss"
# The query options that configure TLS (redis-py's names; kombu takes the same in broker_use_ssl).
TLS_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
CERT_REQS = ("required", "optional", "none")


def is_tls(url: str) -> bool:
    return urlsplit(url).scheme == TLS_SCHEME


def celery_tls(url: str) -> tuple[str, dict | None]:
    """(the URL without its TLS query options, Celery's ``broker_use_ssl``: None for a plain URL)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = {name: value for name, value in query if name in TLS_OPTIONS}
    rest = urlunsplit(parts._replace(query=urlencode([(n, v) for n, v in query if n not in TLS_OPTIONS])))
    if parts.scheme != TLS_SCHEME:
        if options:
            raise ValueError(f"TLS options ({', '.join(sorted(options))}) in a {parts.scheme}:// URL: use rediss://")
        return rest, None
    cert_reqs = options.setdefault("ssl_cert_reqs", "required")  # redis-py's default too: verify the server
    if cert_reqs not in CERT_REQS:
        raise ValueError(f"ssl_cert_reqs={cert_reqs!r}: use one of {', '.join(CERT_REQS)}")
    if "ssl_check_hostname" in options:
        options["ssl_check_hostname"] = options["ssl_check_hostname"].lower() in ("1", "true", "yes", "on")
    return rest, options


def redact(url: str | None) -> str | None:
    """The URL with its password (and a user-only credential) replaced by ``***``: for logs and banners."""
    if not url:
        return url
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError:  # several hosts (a Sentinel group): hide the whole user part
        return _redact(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    if parts.password is not None:
        user = f"{parts.username}:***" if parts.username else ":***"
    else:
        user = "***"  # a lone user name: often a password written without its colon
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, after = rest.rpartition("@")
    return f"{scheme}{sep}***@{after.split('?')[0]}" if at else url.split("?")[0]
