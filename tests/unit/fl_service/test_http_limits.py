"""The service port's resource limits, against a real ServiceHTTPServer on a free loopback port:
body caps refused before the body is read, bounded headers, idle and TLS-handshake timeouts, a
bounded number of connections, and one log line per bad request."""

import contextlib
import logging
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from fl_service import http_server
from fl_service.http_server import (
    BODY_LIMIT,
    HEAD_LIMIT,
    Reply,
    ServiceHTTPServer,
    body_refusal,
    server_context,
)
from fl_service.transport import LinkCounters


def echo_length(query: dict[str, str], body: bytes, peer) -> Reply:
    return Reply(200, str(len(body)).encode(), "text/plain")


def fail(query: dict[str, str], body: bytes, peer) -> Reply:
    raise RuntimeError("the route broke")


ROUTES = {("POST", "/small"): echo_length, ("POST", "/big"): echo_length,
          ("GET", "/status"): echo_length, ("POST", "/fail"): fail}


@pytest.fixture
def start() -> Iterator[Callable[..., int]]:
    """start(**ServiceHTTPServer options) -> the port of a server with ROUTES."""
    with contextlib.ExitStack() as stopping:
        def run(**options) -> int:
            server = ServiceHTTPServer("127.0.0.1", 0, ROUTES, LinkCounters(), **options)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            stopping.callback(server.server_close)
            stopping.callback(server.shutdown)
            return server.server_address[1]

        yield run


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def status_line(reply: bytes) -> str:
    return reply.split(b"\r\n", 1)[0].decode()


def get(sock: socket.socket, request: bytes = b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n"
        ) -> tuple[str, bytes]:
    """Send one request on a keep-alive connection; (status line, body) of its reply."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    while len(body) < length:
        body += sock.recv(4096)
    return status_line(head), body


@pytest.mark.parametrize(("method", "lengths", "chunked", "expected"), [
    ("POST", [], False, (411, "POST /p: Content-Length missing")),
    ("GET", [], False, None),
    ("POST", ["-1"], False, (400, "POST /p: Content-Length '-1' is not a non-negative integer")),
    ("POST", ["12abc"], False, (400, "POST /p: Content-Length '12abc' is not a non-negative "
                                     "integer")),
    ("POST", ["+5"], False, (400, "POST /p: Content-Length '+5' is not a non-negative integer")),
    ("POST", ["5", "6"], False, (400, "POST /p: conflicting Content-Length headers")),
    ("POST", ["101"], False, (413, "POST /p: Content-Length 101 is over the limit of 100 bytes")),
    ("POST", [], True, (411, "POST /p: Transfer-Encoding is not accepted; send a "
                             "Content-Length")),
    ("POST", ["100"], False, None),
    ("POST", ["0"], False, None),
])
def test_body_refusal_names_what_is_wrong(method, lengths, chunked, expected) -> None:
    assert body_refusal(method, "/p", lengths, chunked, 100) == expected


def test_an_oversized_body_is_refused_before_it_is_sent_and_the_connection_closed(
    start, caplog,
) -> None:
    port = start()
    with connect(port) as sock:
        # Only the head: the refusal must come without waiting for (or reading) the body.
        sock.sendall(b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 314572800\r\n\r\n")
        reply = read_until_closed(sock)
    assert status_line(reply) == "HTTP/1.1 413 Request Entity Too Large"
    assert b"Connection: close" in reply
    assert (b'"POST /small: Content-Length 314572800 is over the limit of '
            + str(BODY_LIMIT).encode() + b' bytes"') in reply
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].exc_info is None
    assert "\n" not in refusals[0].getMessage()


@pytest.mark.parametrize(("head", "status"), [
    (b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", "400 Bad Request"),
    (b"POST /small HTTP/1.1\r\nHost: x\r\n\r\n", "411 Length Required"),
    (b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
     "411 Length Required"),
])
def test_a_missing_or_negative_length_is_refused_and_the_connection_closed(
    start, head: bytes, status: str,
) -> None:
    port = start()
    with connect(port) as sock:
        sock.sendall(head + b"some body bytes")
        assert status_line(read_until_closed(sock)) == f"HTTP/1.1 {status}"


def test_a_route_limit_is_read_at_each_request(start) -> None:
    limit = [10]
    port = start(body_limits={("POST", "/big"): lambda: limit[0]})
    with connect(port) as sock:
        assert get(sock, b"POST /big HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789") == (
            "HTTP/1.1 200 OK", b"10")
        limit[0] = 5  # the same keep-alive connection, a lower limit
        sock.sendall(b"POST /big HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789")
        assert status_line(read_until_closed(sock)) == "HTTP/1.1 413 Request Entity Too Large"


def test_headers_over_the_limit_are_refused(start) -> None:
    port = start()
    with connect(port) as sock:
        filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(80))
        assert len(filler) > HEAD_LIMIT
        sock.sendall(b"GET /status HTTP/1.1\r\n" + filler + b"\r\n")
        assert status_line(read_until_closed(sock)).startswith("HTTP/1.1 431")


def test_an_idle_connection_is_closed_after_the_idle_timeout_a_busy_one_is_not(start) -> None:
    port = start(idle_timeout_s=1.0)
    with connect(port) as idle, connect(port) as busy:
        began = time.monotonic()
        idle.sendall(b"GET /status HTTP/1.1\r\n")  # a partial request, then silence
        for _ in range(4):  # requests closer together than the timeout, 2 s in all
            assert get(busy)[0] == "HTTP/1.1 200 OK"
            time.sleep(0.5)
        assert read_until_closed(idle) == b""
        assert time.monotonic() - began < 5
        assert get(busy)[0] == "HTTP/1.1 200 OK"


def test_a_tls_handshake_that_never_comes_is_cut_off(start, ca, monkeypatch) -> None:
    monkeypatch.setattr(http_server, "TLS_HANDSHAKE_TIMEOUT_S", 0.5)
    files = ca.issue("ga", "global_aggregator")
    port = start(tls=server_context(files["tls_cert"], files["tls_key"], files["tls_ca"]))
    with connect(port) as silent:
        assert read_until_closed(silent) == b""


def test_connections_over_the_limit_are_answered_busy_at_once_and_slots_come_back(
    start,
) -> None:
    port = start(max_connections=2)
    first, second = connect(port), connect(port)
    try:
        for sock in (first, second):  # both are being served (each holds a thread)
            assert get(sock)[0] == "HTTP/1.1 200 OK"
        with connect(port) as third:
            assert status_line(read_until_closed(third)) == "HTTP/1.1 503 Service Unavailable"
        first.close()
        deadline = time.monotonic() + 10
        while True:  # the slot comes back once the server has seen the close
            with connect(port) as fourth:
                fourth.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
                reply = fourth.recv(4096)
            if reply.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert reply.startswith(b"HTTP/1.1 200")
    finally:
        first.close()
        second.close()


def test_a_failing_route_is_one_log_line_without_a_traceback(start, caplog) -> None:
    port = start()
    caplog.set_level(logging.INFO, "fl_service.http")
    with connect(port) as sock:
        sock.sendall(b"POST /fail HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
        assert sock.recv(4096).startswith(b"HTTP/1.1 500")
    deadline = time.monotonic() + 5
    while not caplog.records and time.monotonic() < deadline:
        time.sleep(0.05)
    [record] = [r for r in caplog.records if "/fail" in r.getMessage()]
    assert record.getMessage() == "POST /fail from 127.0.0.1 failed: RuntimeError: the route broke"
    assert record.exc_info is None


def test_starting_looks_up_no_name_a_missing_resolver_would_hold_it_on(monkeypatch) -> None:
    # In a container without a reachable DNS server a name lookup waits out the resolver's
    # timeouts (10 s measured) before the service answers, after every restart.
    asked = []

    def unanswered(*args):
        asked.append(args)
        raise OSError("no resolver answers")

    for lookup in ("getfqdn", "gethostbyaddr", "getnameinfo"):
        monkeypatch.setattr(socket, lookup, unanswered)
    server = ServiceHTTPServer("127.0.0.1", 0, ROUTES, LinkCounters())
    try:
        assert asked == []
        assert server.server_port == server.server_address[1] > 0
    finally:
        server.server_close()


def test_a_service_started_with_1024_open_files_raises_them_to_serve_thousands() -> None:
    """systemd starts a service at 1024 open files (soft), which would cap an LA under its
    thousand children: the server raises the soft limit towards its bound."""
    script = (
        "import resource\n"
        "from fl_service.http_server import ServiceHTTPServer\n"
        "from fl_service.transport import LinkCounters\n"
        "server = ServiceHTTPServer('127.0.0.1', 0, {}, LinkCounters())\n"
        "print(server.max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4196:
        pytest.skip(f"this machine's hard open-file limit is {hard}")
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)))
    assert out.stdout.split() == ["4096", "4196"]
