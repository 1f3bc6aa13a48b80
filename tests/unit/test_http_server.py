"""The API's HTTP protocol (api/server.py) over a real socket: slow and oversized request heads."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn

from api.server import protocol_class
from tests.conftest import free_port, wait_until

HEADER_TIMEOUT_S = 0.5
MAX_HEADER_BYTES = 2048


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def server_port():
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                            http=protocol_class(HEADER_TIMEOUT_S, MAX_HEADER_BYTES),
                            h11_max_incomplete_event_size=MAX_HEADER_BYTES, timeout_keep_alive=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10, "uvicorn")
    yield port
    server.should_exit = True
    thread.join(10)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_normal_request(server_port):
    with socket.create_connection(("127.0.0.1", server_port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert _read_all(sock).startswith(b"HTTP/1.1 200")


def test_slowloris_head_is_cut_off(server_port):
    """A client trickling one header byte every 50 ms would hold the connection for 20 s; it is cut off."""
    with socket.create_connection(("127.0.0.1", server_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")
        closed = False
        for _ in range(400):
            try:
                sock.sendall(b"x")
            except OSError:
                closed = True
                break
            time.sleep(0.05)
            sock.setblocking(False)
            try:
                if sock.recv(65536, socket.MSG_PEEK):
                    closed = True
                    break
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
        assert closed, "the server kept a trickling connection open"
        sock.settimeout(5)
        try:
            assert _read_all(sock).startswith(b"HTTP/1.1 408")
        except ConnectionResetError:
            pass  # closed with the bytes we kept sending unread: a reset is the OS's way to say so


def test_idle_connection_after_a_response_is_closed(server_port):
    with socket.create_connection(("127.0.0.1", server_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert _read_all(sock) == b""  # keep-alive (1 s) then nothing: the server closed it


def test_oversized_head_gets_431(server_port):
    with socket.create_connection(("127.0.0.1", server_port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (MAX_HEADER_BYTES * 2) + b"\r\n\r\n")
        assert _read_all(sock).startswith(b"HTTP/1.1 431")


def test_large_body_with_small_head_is_not_431(server_port):
    with socket.create_connection(("127.0.0.1", server_port), timeout=5) as sock:
        body = b"a" * (MAX_HEADER_BYTES * 4)
        sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        assert _read_all(sock).startswith(b"HTTP/1.1 200")
