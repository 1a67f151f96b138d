"""The wire protocol end to end over a real HTTP server on loopback: frames, the four calls, byte
counts at both ends, aborting a poll, TLS."""

import datetime
import ipaddress
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fl_service import transport
from fl_service.http_server import ServiceHTTPServer
from fl_service.metrics import ServiceState
from fl_service.roles.rounds import RoundCoordinator
from fl_service.transport import (
    FINISHED,
    LinkCounters,
    ParentLink,
    ParentUnavailable,
    aggregator_routes,
    decode_frame,
    encode_frame,
)

MODEL = [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([7], dtype=np.int64)]


def test_frame_round_trip_keeps_header_shapes_dtypes_and_values() -> None:
    header, arrays = decode_frame(encode_frame({"task_id": "t", "n": 3}, MODEL))
    assert header == {"task_id": "t", "n": 3}
    assert [a.dtype for a in arrays] == [np.float32, np.int64]
    assert all(np.array_equal(a, b) for a, b in zip(arrays, MODEL, strict=True))
    assert decode_frame(encode_frame({"finished": True}, None)) == ({"finished": True}, None)


def test_the_model_travels_as_flowers_own_array_record_bytes() -> None:
    """Our writer skips Flower's copies but must produce exactly Flower's serialization."""
    from flwr.app import ArrayRecord
    from flwr.common.serde import array_record_to_proto

    model = [*MODEL, np.array(3, dtype=np.int64), np.zeros((0, 2)), np.ones(5, dtype=np.uint8)]
    frame = encode_frame({"k": "v"}, model)
    head_len = int.from_bytes(frame[:4], "big")
    flower = array_record_to_proto(ArrayRecord(model)).SerializeToString()
    assert frame[4 + head_len:] == flower
    _, arrays = decode_frame(frame)
    assert [a.shape for a in arrays] == [a.shape for a in model]


@pytest.mark.parametrize("frame", [b"", b"\x00\x00", b"\x00\x00\x00\xffabc",
                                   b"\x00\x00\x00\x02[]", b"\x00\x00\x00\x02{}garbage!"])
def test_malformed_frames_raise_value_error(frame: bytes) -> None:
    with pytest.raises(ValueError):
        decode_frame(frame)


class Aggregator:
    """A real RoundCoordinator behind a real HTTP server on a free port."""

    def __init__(self, tls: tuple[str, str] = ("", "")) -> None:
        self.links = LinkCounters()
        cfg = {"name": "agg", "role": "local_aggregator", "pipeline": "p", "parent": "x:1",
               "global_rounds": 1}
        self.state = ServiceState(cfg, self.links)
        self.coordinator = RoundCoordinator("agg", self.state)
        self.server = ServiceHTTPServer("127.0.0.1", 0, aggregator_routes(self.coordinator),
                                        self.links, *tls)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def aggregator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aggregator]:
    monkeypatch.setattr(transport, "POLL_HOLD_S", 0.2)  # empty polls come back quickly
    agg = Aggregator()
    yield agg
    agg.close()


def run_round(agg: Aggregator, results: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(
        agg.coordinator.run_round(1, 1, MODEL, min_participants=1, timeout_s=10)))
    thread.start()
    return thread


def test_a_child_joins_gets_a_task_and_its_update_is_aggregated(aggregator: Aggregator) -> None:
    links = LinkCounters()
    child = ParentLink(("127.0.0.1", aggregator.port), "c1", "client", links)
    assert child.join() == "agg" and child.peer == "agg"
    assert child.poll_task("") is None  # nothing open yet: the long poll times out
    results: list = []
    thread = run_round(aggregator, results)
    header, arrays = child.poll_task("")
    assert header["global_round"] == 1 and header["local_round"] == 1
    update = [a * 2 for a in arrays]
    assert child.send_update({"task_id": header["task_id"], "num_examples": 5}, update) == (
        True, "")
    thread.join(10)
    result = results[0]
    assert result.participants == ["c1"] and result.num_examples == 5
    assert np.array_equal(result.arrays[0], MODEL[0] * 2)
    # The same task is not handed out twice; a late duplicate update is refused.
    assert child.poll_task(header["task_id"]) is None
    accepted, reason = child.send_update({"task_id": header["task_id"], "num_examples": 5},
                                         update)
    assert not accepted and "no open task" in reason
    # Both ends counted the same bytes for the same exchanges.
    mine, theirs = links.snapshot()["agg"], aggregator.links.snapshot()["c1"]
    assert mine["sent_bytes"] == theirs["received_bytes"]
    assert mine["received_bytes"] == theirs["sent_bytes"]
    assert theirs["sent_bytes"] > sum(a.nbytes for a in MODEL)
    aggregator.coordinator.set_finished(True)
    assert child.poll_task(header["task_id"]) == FINISHED
    child.close()


def test_a_child_that_leaves_is_not_waited_for(aggregator: Aggregator) -> None:
    stayer = ParentLink(("127.0.0.1", aggregator.port), "stay", "client", LinkCounters())
    leaver = ParentLink(("127.0.0.1", aggregator.port), "leave", "client", LinkCounters())
    stayer.join()
    leaver.join()
    results: list = []
    thread = run_round(aggregator, results)
    header, arrays = stayer.poll_task("")
    leaver.leave()
    stayer.send_update({"task_id": header["task_id"], "num_examples": 1}, arrays)
    thread.join(10)
    assert not thread.is_alive() and results[0].participants == ["stay"]
    assert aggregator.coordinator.children() == ["stay"]


def test_abort_breaks_a_blocked_poll(aggregator: Aggregator, monkeypatch) -> None:
    monkeypatch.setattr(transport, "POLL_HOLD_S", 30.0)
    child = ParentLink(("127.0.0.1", aggregator.port), "c1", "client", LinkCounters())
    child.join()
    errors: list = []

    def poll() -> None:
        try:
            child.poll_task("")
        except ParentUnavailable as exc:
            errors.append(exc)

    thread = threading.Thread(target=poll)
    thread.start()
    while "c1" not in aggregator.coordinator.children():
        thread.join(0.01)
    child.abort()
    thread.join(10)
    assert not thread.is_alive() and len(errors) == 1


def test_unreachable_parent_raises_parent_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        child = ParentLink(("127.0.0.1", port), "c1", "client", LinkCounters())
        with pytest.raises(ParentUnavailable):
            child.join()


def make_certificate(tmp_path: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hfl-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_parent_is_verified_with_the_configured_ca(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    agg = Aggregator(tls=(cert, key))
    try:
        trusting = ParentLink(("127.0.0.1", agg.port), "c1", "client", LinkCounters(), cert)
        assert trusting.join() == "agg"
        trusting.close()
        plain = ParentLink(("127.0.0.1", agg.port), "c2", "client", LinkCounters())
        with pytest.raises(ParentUnavailable):
            plain.join()
        other = tmp_path / "other"
        other.mkdir()
        other_ca, _ = make_certificate(other)
        doubting = ParentLink(("127.0.0.1", agg.port), "c3", "client", LinkCounters(), other_ca)
        with pytest.raises(ParentUnavailable):
            doubting.join()
    finally:
        agg.close()


def test_an_abstaining_child_is_not_waited_for(aggregator: Aggregator) -> None:
    la0 = ParentLink(("127.0.0.1", aggregator.port), "la0", "local_aggregator", LinkCounters())
    la1 = ParentLink(("127.0.0.1", aggregator.port), "la1", "local_aggregator", LinkCounters())
    la0.join()
    la1.join()
    results: list = []
    thread = run_round(aggregator, results)
    header, arrays = la0.poll_task("")
    assert la1.poll_task("")[0]["task_id"] == header["task_id"]
    assert la1.send_update({"task_id": header["task_id"], "abstain": True}, None) == (
        False, "abstained")
    la0.send_update({"task_id": header["task_id"], "num_examples": 3}, arrays)
    thread.join(10)
    assert results[0].participants == ["la0"]
    assert aggregator.state.rejected_updates == 0
