"""Redis over TLS (rediss://): every client kind Sluice builds talks to a real TLS-only redis-server."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from urllib.parse import quote

import pytest
import redis

from broker.celery_app import create_app
from core import keys
from core.redis_clients import async_client, sync_client
from core.settings import Settings
from tests.conftest import free_port, wait_until

PASSWORD = "s3cret-pass"


def _certificates(directory) -> dict:
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=sluice-test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
        "-extfile", "san.ext", "-out", "server.crt")
    return {name: directory / name for name in ("ca.crt", "server.crt", "server.key")}


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    if shutil.which("redis-server") is None or shutil.which("openssl") is None:
        pytest.skip("needs redis-server and openssl")
    directory = tmp_path_factory.mktemp("tls")
    certs = _certificates(directory)
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(certs["server.crt"]),
         "--tls-key-file", str(certs["server.key"]), "--tls-ca-cert-file", str(certs["ca.crt"]),
         "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.3)
    if server.poll() is not None:
        output = server.stdout.read()
        if "tls" in output.lower():
            pytest.skip(f"redis-server cannot serve TLS here: {output.strip()[-200:]}")
        raise RuntimeError(f"redis-server failed: {output}")
    url = (f"rediss://:{quote(PASSWORD)}@127.0.0.1:{port}/0?ssl_cert_reqs=required"
           f"&ssl_ca_certs={quote(str(certs['ca.crt']))}")
    try:
        wait_until(lambda: _pings(url), 20, "the TLS redis-server")
        yield url, port, certs
    finally:
        server.terminate()
        server.wait(10)


def _pings(url: str) -> bool:
    try:
        return sync_client(url).ping()
    except redis.RedisError:
        return False


def test_plain_connection_to_tls_port_fails(tls_redis):
    url, port, _ = tls_redis
    # The server speaks only TLS: the test would pass vacuously if a plain client got through.
    with pytest.raises(redis.RedisError):
        redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_timeout=2).ping()


def test_unverified_server_is_refused(tls_redis):
    url, _, _ = tls_redis
    without_ca = url.split("&ssl_ca_certs=")[0]  # required verification, no CA that signed the server
    with pytest.raises(redis.ConnectionError):
        sync_client(without_ca).ping()


def test_sync_and_async_clients_over_tls(tls_redis):
    url, _, _ = tls_redis
    client = sync_client(url)
    client.set("sluice:tls-test", "1")
    assert client.get("sluice:tls-test") == b"1"

    async def read():
        aclient = async_client(url)
        try:
            return await aclient.get("sluice:tls-test")
        finally:
            await aclient.aclose()

    assert asyncio.run(read()) == b"1"


def test_celery_publishes_over_tls(tls_redis):
    """The Celery app (API publisher, worker consumer, control) reaches the lane over TLS."""
    url, _, _ = tls_redis
    app = create_app(Settings(redis_url=url))
    assert app.conf.broker_use_ssl["ssl_cert_reqs"] == "required"
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
        with connection.channel() as channel:
            assert issubclass(channel.client.connection_pool.connection_class, redis.SSLConnection)
    app.send_task("sluice.tls-probe", args=[], queue="batch",
                  headers={"sluice_score": time.time()})
    assert sync_client(url).zcard(keys.lane_key("batch")) >= 1
