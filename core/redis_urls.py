"""Redis URLs: TLS options for every client, and a printable form without the password (pure).

A ``rediss://`` URL is Redis over TLS.  redis-py reads it, with its TLS options, from the URL itself
(``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname`` in the
query), so ``core.redis_clients`` needs nothing more.  Celery's broker URL is Sluice's ``sluice://``
transport, which kombu does not know to be TLS: ``celery_tls`` takes the same options out of the URL and
returns them as Celery's ``broker_use_ssl``, so the API's publisher, the workers' consumers, Flower and
the scaler's control client all use the options the plain Redis clients use.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
