"""Sentinel URLs: parsing, the broker URL and transport options built from them, redaction."""

from __future__ import annotations

import pytest

from broker.celery_app import broker_url, sentinel_transport_options
from core.redis_urls import SentinelURL, is_sentinel_url, parse_sentinel_url, redact


def test_full_sentinel_url():
    parsed = parse_sentinel_url("redis+sentinel://:s%40cret@h1:26380,h2,[::1]:26381/mymaster/2"
                                "?sentinel_password=sp")
    assert parsed == SentinelURL((("h1", 26380), ("h2", 26379), ("::1", 26381)), "mymaster", 2, None, "s@cret", "sp")
    assert parsed.master_kwargs() == {"db": 2, "password": "s@cret"}
    assert parsed.sentinel_kwargs() == {"password": "sp"}


def test_kombu_scheme_user_and_default_db():
    parsed = parse_sentinel_url("sentinel://alice:pw@10.0.0.1:26379/svc")
    assert (parsed.username, parsed.password, parsed.db, parsed.service_name) == ("alice", "pw", 0, "svc")
    assert is_sentinel_url("SENTINEL://x/y") and not is_sentinel_url("redis://x:6379/0")


@pytest.mark.parametrize("url, message", [
    ("redis+sentinel://h1:26379", "service"),
    ("redis+sentinel:///mymaster/0", "no sentinel host"),
    ("redis+sentinel://h1:port/mymaster", "bad sentinel address"),
    ("redis+sentinel://h1/mymaster/zero", "db must be a number"),
    ("redis+sentinel://h1/mymaster/0/extra", "service"),
    ("redis+sentinel://h1/mymaster?retries=3", "unknown option"),
])
def test_bad_sentinel_urls_say_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=message):
        parse_sentinel_url(url)


def test_errors_and_logs_never_show_the_password():
    with pytest.raises(ValueError) as error:
        parse_sentinel_url("redis+sentinel://:hunter2@h1/")
    assert "hunter2" not in str(error.value)
    assert redact("redis://:hunter2@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("redis://host:6379/0") == "redis://host:6379/0"


def test_broker_url_and_transport_options_of_a_sentinel_url():
    url = "redis+sentinel://:pw@h1:26380,h2:26381/mymaster/3"
    assert broker_url(url) == "sluicesentinel://:pw@h1:26380/3"
    assert sentinel_transport_options(url) == {"master_name": "mymaster", "sentinels": [["h1", 26380], ["h2", 26381]]}
    assert broker_url("redis://h:6379/1") == "sluice://h:6379/1" and sentinel_transport_options("redis://h/1") == {}
