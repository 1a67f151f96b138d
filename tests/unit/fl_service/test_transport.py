"""The wire protocol end to end over a real HTTP server on loopback: frames, tasks and the kinds
of update, the four calls, byte counts at both ends, aborting a poll, TLS."""

import io
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from throwaway_pki import ThrowawayCA

from fl_service import transport
from fl_service.access import Access
from fl_service.http_server import ServiceHTTPServer, server_context
from fl_service.metrics import ServiceState
from fl_service.roles.rounds import RoundCoordinator
from fl_service.strategy import build_driver
from fl_service.transport import (
    EVALUATE,
    FINISHED,
    FRAME_TYPE,
    TRAIN,
    LinkCounters,
    ParentLink,
    ParentUnavailable,
    abstain_update,
    aggregator_routes,
    client_context,
    decode_frame,
    encode_frame,
    encode_task,
    error_update,
    evaluate_update,
    frame_parts,
    npy_header,
    parse_update,
    read_frame,
    train_update,
)

MODEL = {"fc.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
         "bn.num_batches_tracked": np.array([7], dtype=np.int64)}


def test_frame_round_trip_keeps_header_names_shapes_dtypes_and_values() -> None:
    header, arrays = decode_frame(encode_frame({"task_id": "t", "n": 3}, MODEL))
    assert header == {"task_id": "t", "n": 3}
    assert list(arrays) == list(MODEL)  # state_dict names, in order
    assert [a.dtype for a in arrays.values()] == [np.float32, np.int64]
    assert all(np.array_equal(arrays[k], MODEL[k]) for k in MODEL)
    assert not arrays["fc.weight"].flags.writeable  # views of the received bytes
    assert decode_frame(encode_frame({"finished": True}, None)) == ({"finished": True}, None)


def test_the_model_travels_as_flowers_own_array_record_bytes() -> None:
    """Our writer skips Flower's copies but must produce exactly Flower's serialization of the
    model's state_dict, names as keys."""
    from collections import OrderedDict

    import torch
    from flwr.app import Array, ArrayRecord
    from flwr.common.serde import array_record_to_proto

    model = {**MODEL, "scalar": np.array(3, dtype=np.int64), "empty": np.zeros((0, 2)),
             "features.0.bias": np.ones(5, dtype=np.uint8)}
    frame = encode_frame({"k": "v"}, model)
    head_len = int.from_bytes(frame[:4], "big")
    flower = array_record_to_proto(ArrayRecord({k: Array(v) for k, v in model.items()}))
    assert frame[4 + head_len:] == flower.SerializeToString()
    _, arrays = decode_frame(frame)
    assert {k: a.shape for k, a in arrays.items()} == {k: a.shape for k, a in model.items()}
    # A torch state_dict as Flower's ArrayRecord takes it: the same bytes again.
    state_dict = OrderedDict((k, torch.from_numpy(v.copy())) for k, v in MODEL.items())
    assert encode_frame({}, MODEL)[6:] == array_record_to_proto(
        ArrayRecord(state_dict)).SerializeToString()


def test_arrays_of_one_name_and_shape_in_other_dtypes_or_orders_are_written_as_they_are() -> None:
    """Item heads and npy headers are kept from frame to frame: one kept for an array must
    never be written for another of the same name and shape."""
    from flwr.app import Array, ArrayRecord
    from flwr.common.serde import array_record_to_proto

    values = np.arange(6).reshape(2, 3)
    for array in (values.astype("<f4"), values.astype(">f4"), values.astype(np.int16),
                  np.asfortranarray(values.astype("<f4")), values.astype("<f4").T):
        frame = encode_frame({}, {"w": array})
        flower = array_record_to_proto(ArrayRecord({"w": Array(np.ascontiguousarray(array))}))
        assert frame[6:] == flower.SerializeToString()
        _, arrays = decode_frame(frame)
        assert arrays["w"].dtype == array.dtype and arrays["w"].shape == array.shape
        np.testing.assert_array_equal(arrays["w"], array)


def test_task_header_and_update_headers() -> None:
    from fl_service.transport import encode_task

    header, arrays = decode_frame(encode_task("t1", EVALUATE, 3, 0, {"server-round": 3,
                                                                     "local-round": 0}, MODEL))
    assert header == {"task_id": "t1", "type": "evaluate", "global_round": 3, "local_round": 0,
                      "config": {"server-round": 3, "local-round": 0}}
    assert list(arrays) == list(MODEL)
    train = parse_update(train_update("t1", 5, {"loss": 0.5}, {"1": 5}, 0.25), MODEL)
    assert (train.num_examples, train.metrics, train.histogram, train.train_time_s) == (
        5, {"loss": 0.5, "num-examples": 5}, {"1": 5}, 0.25)
    assert train.invalid is None and train.error is None and not train.abstain
    evaluate = parse_update(evaluate_update("t1", 4, {"accuracy": 0.75}), None)
    assert evaluate.metrics == {"accuracy": 0.75, "num-examples": 4} and evaluate.arrays is None
    error = parse_update(error_update("t1", "KeyError: 'x'\nTraceback ..."), None)
    assert error.error == "KeyError: 'x'"
    # An old-style header without metrics still carries its weight.
    assert parse_update({"task_id": "t1", "num_examples": 2}, MODEL).metrics == {
        "num-examples": 2}


@pytest.mark.parametrize(("header", "arrays", "reason"), [
    ({"num_examples": 0}, MODEL, "positive integer"),
    ({"num_examples": 2.5}, MODEL, "positive integer"),
    ({"num_examples": True}, MODEL, "positive integer"),
    ({"num_examples": 3, "metrics": {"acc": "high"}}, MODEL, "metrics"),
    ({"num_examples": 3, "metrics": {"acc": [1, 2.0]}}, MODEL, "metrics"),
    ({"num_examples": 3, "metrics": {"num-examples": 4}}, MODEL, "differs"),
    ({"error": "boom"}, MODEL, "carries no model"),
])
def test_bad_update_headers_are_invalid_with_a_reason(header, arrays, reason) -> None:
    assert reason in parse_update({"task_id": "t", **header}, arrays).invalid


def read_from_stream(frame: bytes) -> tuple:
    """As a child reads a task: a frame this small in one read call."""
    return read_frame(io.BytesIO(frame).read, len(frame))


def read_field_by_field(frame: bytes) -> tuple:
    """As a child reads a task over _READ_WHOLE bytes."""
    with mock.patch.object(transport, "_READ_WHOLE", 0):
        return read_frame(io.BytesIO(frame).read, len(frame))


READERS = [decode_frame, read_from_stream, read_field_by_field]


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (numbers < 16, lengths < 2**14 here)."""
    n = len(payload)
    length = bytes([n]) if n < 128 else bytes([n & 0x7F | 0x80, n >> 7])
    return bytes([number << 3 | 2]) + length + payload


@pytest.mark.parametrize("read", READERS)
def test_frames_are_read_whatever_the_field_order_skipping_unknown_fields(read) -> None:
    # Protobuf writes fields in number order; a reader must not rely on it.
    values = np.arange(3, dtype=np.int16)
    data = npy_header(values) + values.tobytes()
    array = field(4, data) + b"\x28\x07" + field(3, b"numpy.ndarray") + field(1, b"int16")
    item = field(2, array) + field(9, b"later") + field(1, b"w")
    frame = encode_frame({"k": 1}, None) + field(1, item) + b"\x10\x01"
    header, arrays = read(frame)
    assert header == {"k": 1} and list(arrays) == ["w"]
    np.testing.assert_array_equal(arrays["w"], np.arange(3, dtype=np.int16))


def test_a_frame_in_memory_is_read_as_views_of_it_and_a_streamed_one_once() -> None:
    frame = encode_frame({}, MODEL)
    _, in_memory = decode_frame(frame)
    assert all(np.shares_memory(a, np.frombuffer(frame, np.uint8)) for a in in_memory.values())
    for read in (read_from_stream, read_field_by_field):
        _, streamed = read(frame)
        assert all(type(a.base.base) is bytes for a in streamed.values())  # npy bytes of its own
        assert all(np.array_equal(streamed[k], MODEL[k]) for k in MODEL)


def test_an_item_read_before_is_known_again_only_by_all_the_bytes_before_its_data() -> None:
    # Items of one length: names "a" and "b", int32 (4,) and uint8 (16,).
    variants = {"a": np.arange(4, dtype=np.int32), "b": np.arange(16, dtype=np.uint8)}
    frames = {name: encode_frame({}, {name: v}) for name, v in variants.items()}
    assert len(frames["a"]) == len(frames["b"])
    for _ in range(2):
        for name, frame in frames.items():
            for read in READERS:
                _, arrays = read(frame)
                assert list(arrays) == [name] and arrays[name].dtype == variants[name].dtype
                np.testing.assert_array_equal(arrays[name], variants[name])


@pytest.mark.parametrize("read", READERS)
@pytest.mark.parametrize("frame", [
    b"", b"\x00\x00", b"\x00\x00\x00\xffabc", b"\x00\x00\x00\x02[]",
    b"\x00\x00\x00\x02{}garbage!",
    b"\x00\x00\x00\x02{}\x0a\x7f",  # an item longer than the frame
    b"\x00\x00\x00\x02{}\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # varint > 64 bits
    b"\x00\x00\x00\x02{}\x0f",  # wire type 7
    b"\x00\x00\x00\x02{}\x0a\x02\x12\x00",  # an item whose array has no npy stype
])
def test_malformed_frames_raise_value_error(read, frame: bytes) -> None:
    with pytest.raises(ValueError):
        read(frame)


class Aggregator:
    """A real RoundCoordinator behind a real HTTP server on a free port; an LA named agg. With
    `tls` (its TLS config keys) it serves mutual TLS and checks its children's certificates."""

    def __init__(self, tls: dict[str, str] | None = None) -> None:
        self.links = LinkCounters()
        cfg = {"name": "agg", "role": "local_aggregator", "pipeline": "p", "parent": "x:1",
               "global_rounds": 1, "controller_name": "hfl-controller", **(tls or {})}
        self.state = ServiceState(cfg, self.links)
        self.coordinator = RoundCoordinator("agg", self.state)
        routes = aggregator_routes(self.coordinator, Access(cfg).child)
        context = server_context(tls["tls_cert"], tls["tls_key"], tls["tls_ca"]) if tls else None
        # Updates up to a few MB (a service sets this limit from its task frames).
        limits = {("POST", "/fl/update"): lambda: 4 << 20}
        self.server = ServiceHTTPServer("127.0.0.1", 0, routes, self.links, context, limits)
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


def run_round(agg: Aggregator, results: list, kind: str = TRAIN,
              strategy: str = "flwr.serverapp.strategy:FedAvg",
              model: dict[str, np.ndarray] = MODEL) -> threading.Thread:
    driver = build_driver({"strategy": strategy})
    aggregation = (driver.train_aggregation(1, model) if kind == TRAIN
                   else driver.evaluate_aggregation(1))
    thread = threading.Thread(target=lambda: results.append(agg.coordinator.run_round(
        kind, 1, 1, {"server-round": 1, "local-round": 1}, model, aggregation,
        min_participants=1, timeout_s=10)))
    thread.start()
    return thread


def test_a_child_joins_gets_a_task_and_its_update_is_aggregated(aggregator: Aggregator) -> None:
    links = LinkCounters()
    child = ParentLink(("127.0.0.1", aggregator.port), "c1", "client", links)
    assert child.join(num_examples=5) == "agg" and child.peer == "agg"
    assert child.poll_task("") is None  # nothing open yet: the long poll times out
    results: list = []
    thread = run_round(aggregator, results)
    header, arrays = child.poll_task("")
    assert header["global_round"] == 1 and header["local_round"] == 1
    assert header["type"] == "train" and header["config"]["server-round"] == 1
    update = {k: a * 2 for k, a in arrays.items()}
    sent = train_update(header["task_id"], 5, {"loss": 0.5})
    assert child.send_update(sent, update) == (True, "")
    thread.join(10)
    result = results[0]
    assert result.participants == ["c1"] and result.num_examples == 5
    assert result.metrics == {"loss": 0.5, "num-examples": 5} and result.loss == 0.5
    assert np.array_equal(result.arrays["fc.weight"], MODEL["fc.weight"] * 2)
    # The same task is not handed out twice; a late duplicate update is refused.
    assert child.poll_task(header["task_id"]) is None
    accepted, reason = child.send_update(sent, update)
    assert not accepted and "no open task" in reason
    # Both ends counted the same bytes for the same exchanges.
    mine, theirs = links.snapshot()["agg"], aggregator.links.snapshot()["c1"]
    assert mine["sent_bytes"] == theirs["received_bytes"]
    assert mine["received_bytes"] == theirs["sent_bytes"]
    assert theirs["sent_bytes"] > sum(a.nbytes for a in MODEL.values())
    aggregator.coordinator.set_finished(True)
    assert child.poll_task(header["task_id"]) == FINISHED
    child.close()


def test_a_child_that_leaves_is_not_waited_for(aggregator: Aggregator) -> None:
    stayer = ParentLink(("127.0.0.1", aggregator.port), "stay", "client", LinkCounters())
    leaver = ParentLink(("127.0.0.1", aggregator.port), "leave", "client", LinkCounters())
    stayer.join(1)
    leaver.join(1)
    results: list = []
    thread = run_round(aggregator, results)
    header, arrays = stayer.poll_task("")
    leaver.leave()
    stayer.send_update(train_update(header["task_id"], 1, {}), arrays)
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


def test_a_parent_that_dies_while_sending_a_task_is_unavailable_not_fatal() -> None:
    """The task frame breaks off mid-body (its LA was killed): the child is told its parent is
    unavailable and retries; a ValueError here ended a pool of 500 virtual clients."""
    frame = encode_task("t1", TRAIN, 1, 1, {}, MODEL)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def die_mid_frame() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: " + FRAME_TYPE.encode()
                             + f"\r\nContent-Length: {len(frame)}\r\n\r\n".encode()
                             + frame[:len(frame) // 2])

        thread = threading.Thread(target=die_mid_frame)
        thread.start()
        child = ParentLink(server.getsockname(), "c1", "client", LinkCounters())
        with pytest.raises(ParentUnavailable, match="frame"):
            child.poll_task("")
        thread.join(10)


def test_unreachable_parent_raises_parent_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        child = ParentLink(("127.0.0.1", port), "c1", "client", LinkCounters())
        with pytest.raises(ParentUnavailable):
            child.join()


def tls_link(agg: Aggregator, files: dict[str, str], name: str) -> ParentLink:
    context = client_context(files["tls_cert"], files["tls_key"], files["tls_ca"])
    return ParentLink(("127.0.0.1", agg.port), name, "client", LinkCounters(), context)


def test_a_tls_child_shows_its_certificate_and_verifies_its_parents(ca, tmp_path: Path) -> None:
    agg = Aggregator(tls=ca.issue("agg", "local_aggregator"))
    try:
        trusting = tls_link(agg, ca.issue("c1", "client"), "c1")
        assert trusting.join() == "agg"
        trusting.close()
        plain = ParentLink(("127.0.0.1", agg.port), "c2", "client", LinkCounters())
        with pytest.raises(ParentUnavailable):
            plain.join()
        stranger = ThrowawayCA(tmp_path / "other").issue("c3", "client")
        with pytest.raises(ParentUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            tls_link(agg, stranger, "c3").join()  # it does not trust the parent's CA
        assert agg.coordinator.children() == ["c1"]
    finally:
        agg.close()


def test_an_abstaining_child_is_not_waited_for(aggregator: Aggregator) -> None:
    la0 = ParentLink(("127.0.0.1", aggregator.port), "la0", "local_aggregator", LinkCounters())
    la1 = ParentLink(("127.0.0.1", aggregator.port), "la1", "local_aggregator", LinkCounters())
    la0.join(3)
    la1.join(3)
    results: list = []
    thread = run_round(aggregator, results)
    header, arrays = la0.poll_task("")
    assert la1.poll_task("")[0]["task_id"] == header["task_id"]
    assert la1.send_update(abstain_update(header["task_id"]), None) == (False, "abstained")
    la0.send_update(train_update(header["task_id"], 3, {}), arrays)
    thread.join(10)
    assert results[0].participants == ["la0"]
    assert aggregator.state.rejected_updates == 0


def children(agg: Aggregator, *names: str) -> list[ParentLink]:
    links = [ParentLink(("127.0.0.1", agg.port), n, "client", LinkCounters()) for n in names]
    for link in links:
        link.join(num_examples=10)
    return links


def test_an_evaluate_round_aggregates_metrics_and_counts_an_error_reply(
    aggregator: Aggregator,
) -> None:
    c1, c2, c3, c4 = children(aggregator, "c1", "c2", "c3", "c4")
    results: list = []
    thread = run_round(aggregator, results, kind=EVALUATE)
    header, arrays = c1.poll_task("")
    task_id = header["task_id"]
    assert header["type"] == "evaluate" and list(arrays) == list(MODEL)  # the model goes too
    assert c1.send_update(evaluate_update(task_id, 30, {"accuracy": 0.9, "loss": 0.3}),
                          None) == (True, "")
    assert c2.send_update(evaluate_update(task_id, 10, {"accuracy": 0.5, "loss": 1.0}),
                          None) == (True, "")
    # A client whose app raised; one that trained instead of evaluating.
    assert c3.send_update(error_update(task_id, "RuntimeError: no data"), None) == (
        False, "error recorded")
    accepted, reason = c4.send_update(train_update(task_id, 5, {}), arrays)
    assert not accepted and "carries no model" in reason
    thread.join(10)
    result = results[0]
    assert result.arrays is None and result.participants == ["c1", "c2"]
    assert result.metrics == pytest.approx({"accuracy": 0.8, "loss": 0.475, "num-examples": 40})
    assert aggregator.state.rejected_updates == 2
    assert aggregator.coordinator.children() == ["c1", "c2", "c3", "c4"]  # all answered


def test_replies_with_different_metric_keys_are_aggregated_on_the_common_keys(
    aggregator: Aggregator,
) -> None:
    c1, c2 = children(aggregator, "c1", "c2")
    results: list = []
    thread = run_round(aggregator, results)
    header, arrays = c1.poll_task("")
    c1.send_update(train_update(header["task_id"], 1, {"loss": 1.0, "extra": 5.0}), arrays)
    c2.send_update(train_update(header["task_id"], 3, {"loss": 2.0}), arrays)
    thread.join(10)
    assert results[0].metrics == {"loss": 1.75, "num-examples": 4}


def test_a_strategy_that_fails_fails_the_round_and_is_counted(aggregator: Aggregator) -> None:
    (c1,) = children(aggregator, "c1")
    results: list = []
    # Bulyan needs at least 3 replies (4 * num_malicious_nodes + 3) and returns None with one.
    thread = run_round(aggregator, results, strategy="flwr.serverapp.strategy:Bulyan")
    header, arrays = c1.poll_task("")
    assert c1.send_update(train_update(header["task_id"], 3, {}), arrays) == (True, "")
    thread.join(10)
    assert results == [None]
    assert aggregator.state.failed_aggregations == 1
    assert aggregator.state.status()["failed_aggregations"] == 1



def test_a_large_model_sent_in_pieces_arrives_whole_and_is_counted_alike(
    aggregator: Aggregator,
) -> None:
    # Arrays over the piece threshold travel as views of the child's arrays (frame_parts), a
    # transposed one through its C-order copy; the parent gets exactly encode_frame's frame.
    model = {**MODEL, "conv.weight": np.linspace(0, 1, 60_000, dtype=np.float32).reshape(200, 300)}
    update = {**model, "conv.weight": np.ascontiguousarray(model["conv.weight"].T * 2).T}
    pieces = frame_parts({"task_id": "t"}, update)
    assert any(isinstance(p, memoryview) for p in pieces)
    assert b"".join(pieces) == encode_frame({"task_id": "t"}, {
        **model, "conv.weight": model["conv.weight"] * 2})
    links = LinkCounters()
    child = ParentLink(("127.0.0.1", aggregator.port), "c1", "client", links)
    child.join(num_examples=5)
    results: list = []
    thread = run_round(aggregator, results, model=model)
    header, _ = child.poll_task("")
    assert child.send_update(train_update(header["task_id"], 5, {}), update) == (True, "")
    thread.join(10)
    assert np.allclose(results[0].arrays["conv.weight"], model["conv.weight"] * 2, rtol=1e-6)
    mine, theirs = links.snapshot()["agg"], aggregator.links.snapshot()["c1"]
    assert mine["sent_bytes"] == theirs["received_bytes"] > model["conv.weight"].nbytes
    child.close()
