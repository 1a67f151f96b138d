"""Resource limits against real processes with mutual TLS on: an oversized or malformed body is
refused before it is read, and idle connections do not stop training (docs/architecture.md,
Resource limits). The attacker holds a client certificate of the pipeline (a compromised client)
where the limit is behind the certificate check, and none where it is not (idle connections)."""

import socket
import ssl
from pathlib import Path

import pytest
from fl_procs import Pipeline, Service

pytestmark = pytest.mark.integration

TRAINING = {"dataset": "digits", "seed": 0, "learning_rate": 0.05, "batch_size": 32}
HUGE = 300 * 1024 * 1024


def finished(status: dict) -> bool:
    return status["state"] == "finished"


def rss_bytes(service: Service) -> int:
    assert service.process is not None
    for line in Path(f"/proc/{service.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def connect(port: int, tls: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS connection to a service on loopback, handshake done."""
    return tls.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30),
                           server_hostname="127.0.0.1")


def read_reply(sock: socket.socket) -> str:
    """One reply, head and body (by its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    while len(body) < length:
        body += sock.recv(4096)
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


def post_huge(port: int, tls: ssl.SSLContext) -> tuple[str, int]:
    """POST a HUGE update to the service on `port` as `tls`: (its reply, which comes before a
    single body byte is sent, and how many body bytes went out before it closed)."""
    sent = 0
    with connect(port, tls) as sock:
        sock.sendall(b"POST /fl/update HTTP/1.1\r\nHost: ga\r\nContent-Type: "
                     b"application/x-hfl-frame\r\nContent-Length: %d\r\n\r\n" % HUGE)
        reply = read_reply(sock)
        chunk = b"\0" * (1 << 20)
        try:
            while sent < HUGE:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
    return reply, sent


def trained_pipeline(pipeline: Pipeline, rounds: int) -> Service:
    ga = pipeline.add("ga", "ga", global_rounds=rounds, min_participants=2, round_timeout_s=30,
                      **TRAINING)
    for i in range(2):
        pipeline.add("client", f"c{i}", parent=ga.address, partition_id=i, num_partitions=2,
                     **TRAINING)
    return ga


def test_a_300_mb_update_is_refused_without_the_ga_growing(tls_pipeline: Pipeline) -> None:
    pipeline = tls_pipeline
    ga = trained_pipeline(pipeline, rounds=1)
    pipeline.wait_for("ga", finished, "finished run")  # the GA has handed out its model
    mallory = pipeline.identity("mallory", "client")
    before = rss_bytes(ga)
    reply, sent = post_huge(ga.port, mallory)
    assert reply.startswith("HTTP/1.1 413 ") and "Connection: close" in reply
    assert f"Content-Length {HUGE} is over the limit of" in reply
    assert sent < HUGE  # the GA closed the connection instead of reading
    growth = rss_bytes(ga) - before
    assert growth < 10 * 1024 * 1024, f"the GA grew by {growth} bytes"
    assert ga.status()["state"] == "finished"
    log = ga.log_path.read_text()
    assert f"refused /fl/update from 127.0.0.1: POST /fl/update: Content-Length {HUGE}" in log
    assert "Traceback" not in log


def test_a_negative_or_malformed_length_is_refused_and_the_ga_serves_on(
    tls_pipeline: Pipeline,
) -> None:
    pipeline = tls_pipeline
    ga = pipeline.add("ga", "ga", global_rounds=1, min_participants=1, **TRAINING)
    pipeline.wait_for("ga", lambda s: s["state"] == "waiting", "the GA waiting for children")
    mallory = pipeline.identity("mallory", "client")
    for length in ("-1", "12abc"):
        with connect(ga.port, mallory) as sock:
            sock.sendall(b"POST /fl/update HTTP/1.1\r\nHost: ga\r\nContent-Length: "
                         + length.encode() + b"\r\n\r\nwhatever follows")
            reply = read_reply(sock)
            assert sock.recv(4096) == b""  # and the connection is closed
        assert reply.startswith("HTTP/1.1 400 ")
        assert f"Content-Length '{length}' is not a non-negative integer" in reply
    assert ga.status()["state"] == "waiting"


def test_300_idle_connections_do_not_stop_rounds_from_completing(
    tls_pipeline: Pipeline,
) -> None:
    pipeline = tls_pipeline
    ga = pipeline.add("ga", "ga", global_rounds=3, min_participants=2, round_timeout_s=30,
                      **TRAINING)
    pipeline.wait_for("ga", lambda s: s["state"] == "waiting", "the GA waiting for children")
    nobody = pipeline.anonymous()
    idle = []
    try:
        for i in range(300):  # each through the TLS handshake, so not cut off by its timeout
            sock = connect(ga.port, nobody)
            if i % 2:  # half say nothing, half stop in the middle of a request
                sock.sendall(b"POST /fl/update HTTP/1.1\r\nContent-Length: 100\r\n")
            idle.append(sock)
        for i in range(2):
            pipeline.add("client", f"c{i}", parent=ga.address, partition_id=i,
                         num_partitions=2, **TRAINING)
        status = pipeline.wait_for("ga", finished, "finished run with 300 idle connections")
    finally:
        for sock in idle:
            sock.close()
    assert status["global_round"] == 3
    assert [r["participants"] for r in ga.results()] == [["c0", "c1"]] * 3
