"""Hostile input: the pure checks of api/limits.py and Redis URL handling (core/redis_urls.py)."""

from __future__ import annotations

import json

import pytest

from api.errors import APIError
from api.limits import check_messages, declared_length, decode_json, json_depth
from broker.celery_app import broker_tls, broker_url
from core.redis_urls import celery_tls, redact


@pytest.mark.parametrize("text, depth", [
    ("1", 0), ('"[[[["', 0), ("[]", 1), ('{"a": [1, {"b": []}]}', 4), ('["]", "\\"[", [[]]]', 3),
    ('{"a\\\\": "[{"}', 1),
])
def test_json_depth(text, depth):
    assert json_depth(text.encode()) == depth


def test_deep_nesting_is_a_400_not_a_recursion_error():
    raw = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(APIError) as caught:
        decode_json(raw, 32)
    assert caught.value.status == 400 and "nests 100000 levels" in caught.value.message
    assert decode_json(b'{"a": [[1]]}', 3) == {"a": [[1]]}


@pytest.mark.parametrize("raw", [b"{", b"\xff\xfe", b"", b'{"a": 1}}'])
def test_bad_json_is_a_400(raw):
    with pytest.raises(APIError) as caught:
        decode_json(raw, 32)
    assert caught.value.status == 400 and caught.value.code == "invalid_json"


def test_message_count():
    check_messages({"messages": [{}] * 3}, 3)
    check_messages({"messages": "not a list"}, 3)  # the schema's validation answers that one
    with pytest.raises(APIError) as caught:
        check_messages({"messages": [{}] * 4}, 3)
    assert caught.value.status == 400 and caught.value.param == "messages"


def test_declared_length():
    assert declared_length({}) is None
    assert declared_length({"content-length": "12"}) == 12
    with pytest.raises(APIError):
        declared_length({"content-length": "-1"})


def test_redact_hides_passwords():
    assert redact("redis://:hunter2@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("rediss://user:hunter2@[::1]:6380/1?ssl_cert_reqs=none") == \
        "rediss://user:***@[::1]:6380/1?ssl_cert_reqs=none"
    assert redact("redis://hunter2@host/0") == "redis://***@host/0"
    assert redact("redis://host:6379/0") == "redis://host:6379/0"
    assert redact(None) is None
    for url in ("redis://:hunter2@host:6379/0", "rediss://u:hunter2@h/0"):
        assert "hunter2" not in redact(url)


def test_celery_tls_options_come_from_the_url():
    url = "rediss://:pw@h:6380/0?ssl_ca_certs=%2Fca.crt&ssl_check_hostname=true&socket_timeout=3"
    rest, options = celery_tls(url)
    assert rest == "rediss://:pw@h:6380/0?socket_timeout=3"
    assert options == {"ssl_ca_certs": "/ca.crt", "ssl_check_hostname": True, "ssl_cert_reqs": "required"}
    assert broker_url(url) == "sluice://:pw@h:6380/0?socket_timeout=3"
    assert broker_tls("redis://h/0") is None
    assert broker_url("redis://h/0") == "sluice://h/0"
    with pytest.raises(ValueError, match="use rediss://"):
        celery_tls("redis://h/0?ssl_ca_certs=/ca.crt")
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        celery_tls("rediss://h/0?ssl_cert_reqs=maybe")


def test_unsupported_scheme_error_does_not_leak_the_password():
    with pytest.raises(ValueError) as caught:
        broker_url("unix://:hunter2@/tmp/redis.sock")
    assert "hunter2" not in str(caught.value)


def test_body_json_round_trip_under_limits():
    body = {"model": "m", "messages": [{"role": "user", "content": "[{" * 50}]}
    assert decode_json(json.dumps(body).encode(), 4) == body
