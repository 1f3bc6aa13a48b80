"""API keys and the auth setting: pure parts (the key record, its format, when authentication is on)."""

from __future__ import annotations

import pytest

from api.auth import bearer_token, owns
from api.errors import APIError
from broker.api_keys import ApiKeyRecord, digest_of, new_key, well_formed
from core.settings import Settings


def test_a_new_key_is_well_formed_and_only_its_digest_is_recorded():
    key = new_key()
    assert key.startswith("sk-sluice-") and well_formed(key)
    assert not well_formed(key + "x") and not well_formed("sk-other") and not well_formed("")
    record = ApiKeyRecord(digest=digest_of(key), tenant="acme", created_at=1.5, lanes=("batch",), rpm=10,
                          weight=2.5)
    stored = record.to_redis()
    assert key not in stored.values()
    assert ApiKeyRecord.from_redis({k.encode(): v.encode() for k, v in stored.items()}) == record
    assert record.key_id == digest_of(key)[:12]
    assert record.may_use("batch") and not record.may_use("interactive")


@pytest.mark.parametrize("fields", [{"tenant": "a b"}, {"lanes": ("fast",)}, {"rpm": 0}, {"tpm": 1.5}, {"rpm": True}, {"weight": 0},
                                    {"admin": "yes"}])
def test_bad_key_settings_are_refused(fields):
    with pytest.raises(ValueError):
        ApiKeyRecord(**{"digest": "0" * 64, "tenant": "acme", "created_at": 0.0, **fields})


@pytest.mark.parametrize("host, mode, enabled", [
    ("127.0.0.1", "auto", False), ("::1", "auto", False), ("localhost", "auto", False),
    ("0.0.0.0", "auto", True), ("10.1.2.3", "auto", True), ("api.example", "auto", True),
    ("127.0.0.1", "required", True), ("0.0.0.0", "off", False)])
def test_auth_auto_is_on_beyond_loopback(host, mode, enabled):
    assert Settings(api_host=host, auth=mode).auth_enabled is enabled


def test_auth_off_beyond_loopback_needs_insecure_too():
    assert Settings(api_host="0.0.0.0", auth="off").auth_refusal()
    assert Settings(api_host="0.0.0.0", auth="off", auth_insecure=True).auth_refusal() is None
    assert Settings(api_host="127.0.0.1", auth="off").auth_refusal() is None


def test_bearer_token_parsing():
    assert bearer_token("Bearer sk-sluice-abc") == "sk-sluice-abc"
    assert bearer_token("bearer  sk-x ") == "sk-x"
    for header in (None, "", "Basic dXNlcg==", "Bearer", "Bearer   "):
        with pytest.raises(APIError) as refused:
            bearer_token(header)
        assert refused.value.status == 401 and refused.value.headers["WWW-Authenticate"] == "Bearer"


def test_ownership():
    acme = ApiKeyRecord(digest="0" * 64, tenant="acme", created_at=0.0)
    assert owns(None, "anyone") and owns(None, None)  # authentication off
    assert owns(acme, "acme") and not owns(acme, "other") and not owns(acme, None)


def test_no_auth_beyond_loopback_refuses_to_start_unless_insecure(monkeypatch):
    from click.testing import CliRunner

    from sluice.cli import auth_flags, main

    for name in ("SLUICE_AUTH", "SLUICE_AUTH_INSECURE", "SLUICE_API_HOST"):
        monkeypatch.delenv(name, raising=False)
    refused = CliRunner().invoke(main, ["api", "--host", "0.0.0.0", "--no-auth"])
    assert refused.exit_code == 1 and "--insecure" in refused.output
    refused = CliRunner().invoke(main, ["run", "--host", "0.0.0.0", "--auth", "off"])
    assert refused.exit_code == 1 and "--insecure" in refused.output
    # Asked twice: the flags make settings that start (the process itself is not started here).
    assert Settings(api_host="0.0.0.0", **auth_flags(None, True, True)).auth_refusal() is None


def test_owners_round_trip_through_the_records():
    from broker.batches import BatchRecord
    from broker.files import FileRecord
    from broker.ledger import LedgerEntry, RequestRecord

    file = FileRecord(id="file-1", bytes=3, created_at=1.0, filename="a", purpose="batch", owner="acme")
    assert FileRecord.from_redis(file.to_redis()) == file
    assert "owner" not in FileRecord(id="f", bytes=0, created_at=1.0, filename="", purpose="batch").to_redis()
    batch = BatchRecord(id="batch_1", endpoint="/v1/completions", input_file_id="file-1", completion_window="24h",
                        created_at=1.0, expires_at=2.0, tenant="acme", tenant_weight=2.5)
    assert BatchRecord.from_redis(batch.to_redis()) == batch
    entry = LedgerEntry(request_id="r", enqueued_at=1.0, tenant="acme")
    assert LedgerEntry.from_header(entry.to_header()) == entry
    assert RequestRecord.from_redis("r", {"status": "queued", "tenant": "acme"}).tenant == "acme"
