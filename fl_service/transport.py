"""The FL wire protocol, and the only module that knows it (docs/architecture.md).

Children talk to their aggregator over HTTP/1.1 with one persistent connection each:
  POST /fl/join   {name, role, num_examples?} -> {name: <aggregator>}   (also a heartbeat;
                  num_examples declares the child's training examples, which bound its updates)
  GET  /fl/task?name=N&after=T  long-poll: a task frame, {"finished": true}, or 204
  POST /fl/update a frame with the child's result for one task
  POST /fl/leave  {name}
A frame is a 4-byte big-endian header length, a JSON header, then the model as the protobuf
bytes of a Flower `ArrayRecord` keyed by state_dict names (exactly what flwr.common.serde
writes); in Python a model is `Arrays`, a dict of numpy arrays by name. Measured with flwr 1.42.0
(bench/round_overhead.py); a long-polled task is answered the moment a round opens, so the
protocol is push-like without Flower's 3 s polling. Bytes (request and response, headers
included) are counted per peer name at both ends.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

import numpy as np
from numpy.lib import format as npy_format

from fl_service.access import forbidden
from fl_service.http_server import CountingReader, Peer, Reply, load_identity

POLL_HOLD_S = 15.0  # how long the aggregator holds a task poll before answering 204
_HEADER_LEN = struct.Struct(">I")
FRAME_TYPE = "application/x-hfl-frame"
JSON_TYPE = "application/json"
Arrays = dict[str, np.ndarray]  # a model: state_dict names -> arrays, in state_dict order


# ---------------------------------------------------------------- frames
# The model travels as the protobuf of a Flower ArrayRecord (flwr.proto.recorddict_pb2), byte
# for byte what `array_record_to_proto(ArrayRecord(arrays)).SerializeToString()` produces
# (tests/unit/fl_service/test_transport.py checks that). We write those bytes ourselves because
# Flower's path copies each tensor six times (np.save, BytesIO, proto fields, serialization):
# measured 6-40 ms per 4 MB model here, against none for the writer below (a frame goes out
# in pieces, frame_parts). The reader further down copies nothing either (decode_frame) or
# reads each array off the socket once (read_frame).
NPY_STYPE = "numpy.ndarray"  # flwr.app Array stype of np.save-format data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _field(number: int, length: int) -> bytes:
    """Tag and length of a length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(length)


def _string_field(number: int, text: str) -> bytes:
    data = text.encode()
    return _field(number, len(data)) + data


# npy headers written (by dtype, shape, Fortran order) and read (by their bytes), and the heads
# of ArrayRecord items, at most this many of each: a model's are the same every round.
_HEADERS_MAX = 4096
_WRITTEN_HEADERS: dict[tuple[np.dtype, tuple[int, ...], bool], bytes] = {}
_ITEM_HEADS: dict[tuple[str, np.dtype, tuple[int, ...]], bytes] = {}


def _array_record_parts(arrays: Mapping[str, np.ndarray]) -> list[bytes | memoryview]:
    """ArrayRecord{items: [Item{key: name, value: Array{dtype, shape, stype, data: npy}}]}:
    each item's head, then a view of its data."""
    parts: list[bytes | memoryview] = []
    for name, array in arrays.items():
        array = np.asarray(array, order="C")  # keeps 0-d arrays 0-d, unlike ascontiguousarray
        parts += [_item_head(name, array), memoryview(array.reshape(-1)).cast("B")]
    return parts


def _item_head(name: str, array: np.ndarray) -> bytes:
    """Everything of an ArrayRecord item before its array's data (C order): the same for a
    model's arrays every round, so kept, as the npy headers are."""
    key = (name, array.dtype, array.shape)
    head = _ITEM_HEADS.get(key)
    if head is None:
        npy = npy_header(array)
        shape = b"".join(_varint(dim) for dim in array.shape)
        array_head = (
            _string_field(1, str(array.dtype))
            + (_field(2, len(shape)) + shape if shape else b"")
            + _string_field(3, NPY_STYPE)
            + _field(4, len(npy) + array.nbytes)
            + npy
        )
        item_head = _string_field(1, name) + _field(2, len(array_head) + array.nbytes)
        head = (_field(1, len(item_head) + len(array_head) + array.nbytes) + item_head
                + array_head)
        if len(_ITEM_HEADS) < _HEADERS_MAX:
            _ITEM_HEADS[key] = head
    return head


def npy_header(array: np.ndarray) -> bytes:
    """The np.save (format 1.0) header of `array`. numpy builds each one from a repr of a dict
    (~5 us); a model's headers are the same every round, so they are kept by (dtype, shape,
    order): a virtual client writes 24 a task (its Message, its reply, its update)."""
    key = (array.dtype, array.shape, not array.flags.c_contiguous and array.flags.f_contiguous)
    head = _WRITTEN_HEADERS.get(key)
    if head is None:
        out = io.BytesIO()
        npy_format.write_array_header_1_0(out, npy_format.header_data_from_array_1_0(array))
        head = out.getvalue()
        if len(_WRITTEN_HEADERS) < _HEADERS_MAX:
            _WRITTEN_HEADERS[key] = head
    return head


# Parsed npy headers by their bytes. numpy parses each header with ast.literal_eval (~0.1 ms);
# a model's headers are the same every round, so after the first round this is a dict lookup.
_HEADERS: dict[bytes, tuple[tuple[int, ...], bool, np.dtype]] = {}
_NPY_MAGIC = b"\x93NUMPY"


def npy_layout(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, offset of the data) of np.save-format `data`."""
    if data[:6] != _NPY_MAGIC or len(data) < 10:
        raise ValueError("not npy data")
    if data[6] == 1:
        offset = 10 + int.from_bytes(data[8:10], "little")
    else:
        offset = 12 + int.from_bytes(data[8:12], "little")
    head = bytes(data[:offset])
    layout = _HEADERS.get(head)
    if layout is None:
        stream = io.BytesIO(head)
        version = npy_format.read_magic(stream)
        read = (npy_format.read_array_header_1_0 if version == (1, 0)
                else npy_format.read_array_header_2_0)
        shape, fortran, dtype = read(stream)
        if dtype.hasobject:
            raise ValueError("object arrays are not accepted")
        layout = (tuple(shape), bool(fortran), dtype)
        if len(_HEADERS) < _HEADERS_MAX:
            _HEADERS[head] = layout
    return (*layout, offset)


def npy_view(data: bytes) -> np.ndarray:
    """The array in np.save-format `data`, as a read-only view (no copy)."""
    shape, fortran, dtype, offset = npy_layout(data)
    count = 1
    for dim in shape:
        count *= dim
    view = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return view.reshape(shape, order="F" if fortran else "C")


# Array data below this size is joined with the heads around it rather than sent on its own.
_SMALL_PIECE = 64 << 10
# A frame (a task) up to this size is read in one call (read_frame).
_READ_WHOLE = 1 << 20


def frame_parts(
    header: dict[str, Any], arrays: Mapping[str, np.ndarray] | None
) -> list[bytes | memoryview]:
    """The frame of `header` and `arrays` as pieces: small heads joined, each array's data a
    view of the array (no copy), for a writer that sends them one after another."""
    head = json.dumps(header).encode()
    pieces: list[bytes | memoryview] = [_HEADER_LEN.pack(len(head)), head]
    if arrays is not None:
        pieces += _array_record_parts(arrays)
    parts: list[bytes | memoryview] = []
    small: list[bytes | memoryview] = []
    for piece in pieces:
        if isinstance(piece, memoryview) and piece.nbytes >= _SMALL_PIECE:
            if small:
                parts.append(b"".join(small))
                small = []
            parts.append(piece)
        else:
            small.append(piece)
    if small:
        parts.append(b"".join(small))
    return parts


def encode_frame(header: dict[str, Any], arrays: Mapping[str, np.ndarray] | None) -> bytes:
    """`arrays`: the model by state_dict name, in state_dict order (the ArrayRecord's keys)."""
    return b"".join(frame_parts(header, arrays))


def decode_frame(frame: bytes) -> tuple[dict[str, Any], Arrays | None]:
    """(header, arrays by name as read-only views of `frame`, or None); ValueError on a
    malformed frame."""
    return _read_frame(_Buffer(frame), len(frame))


def read_frame(read: Callable[[int], bytes], length: int) -> tuple[dict[str, Any], Arrays | None]:
    """decode_frame of a frame of `length` bytes still to be read with `read(n)` (an HTTP
    response): each array's npy bytes are their own bytes object, which a Flower Array holds
    as it is. A frame up to _READ_WHOLE bytes is read in one call and cut up in memory (one
    read call per tag and length is most of a small frame's reading, and a pool's clients
    read theirs while another trains); a larger one is read field by field, each array's
    npy bytes straight off the socket, the one copy the model makes on its way in."""
    if length <= _READ_WHOLE:
        return _read_frame(_Buffer(read(length), copies=True), length)
    return _read_frame(_Stream(read), length)


def _read_frame(src: _Buffer | _Stream, length: int) -> tuple[dict[str, Any], Arrays | None]:
    if length < _HEADER_LEN.size:
        raise ValueError("frame shorter than its length prefix")
    (head_len,) = _HEADER_LEN.unpack(src.take(_HEADER_LEN.size))
    if _HEADER_LEN.size + head_len > length:
        raise ValueError("frame header runs past the frame")
    try:
        header = json.loads(bytes(src.take(head_len)))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("frame header is not a JSON object")
    if src.pos == length:
        return header, None
    try:
        arrays: Arrays = {}
        for key, stype, data in _array_record(src, length):
            if stype != NPY_STYPE:
                raise ValueError(f"array {key}: stype {stype!r}")
            if key in arrays:
                raise ValueError(f"array {key} twice")
            arrays[key] = npy_view(data)
    except Exception as exc:  # numpy and the reader raise many kinds on garbage
        raise ValueError(f"frame model is not an ArrayRecord: {exc}") from None
    return header, arrays


# The reading side of the ArrayRecord protobuf, by hand (the writer is _array_record_parts), so
# that no array is copied twice: protobuf's parser copies every array out of the frame. From a
# frame in memory (an aggregator's received update) the arrays are views of it; from a response
# being read (a child's task) each array's npy bytes are read once, into their own object.
# Fields are read by number whatever their order and unknown ones skipped, as protobuf does;
# anything that does not parse is a ValueError.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class _Buffer:
    """Frame bytes in memory; what is taken is a view of them, or with `copies` a bytes copy
    of its part (for an array's npy bytes, an object of its own, as a _Stream's are)."""

    def __init__(self, data: bytes, copies: bool = False) -> None:
        self.buf = data if copies else memoryview(data)  # slices of bytes are copies
        self.pos = 0

    def take(self, n: int) -> memoryview | bytes:
        if n > len(self.buf) - self.pos:
            raise ValueError("frame ends inside a field")
        self.pos += n
        return self.buf[self.pos - n:self.pos]


class _Stream:
    """A body being read; what is taken is read into a new bytes object."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self.read = read
        self.pos = 0

    def take(self, n: int) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise ValueError("frame ends inside a field")
        self.pos += n
        return data


def _read_varint(src: _Buffer | _Stream) -> int:
    byte = src.take(1)[0]
    if not byte & 0x80:  # tags and most lengths of a frame: one byte
        return byte
    value = byte & 0x7F
    for shift in range(7, 64, 7):
        byte = src.take(1)[0]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
    raise ValueError("varint over 64 bits")


def _fields(src: _Buffer | _Stream, end: int) -> Iterator[tuple[int, int]]:
    """(number, length) of each length-delimited field up to `end`, with `src` at its value,
    which the caller takes whole; fields of other wire types are read past."""
    while src.pos < end:
        key = _read_varint(src)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == _LEN:
            length = _read_varint(src)
            if length > end - src.pos:
                raise ValueError(f"field {number} runs past its message")
            start = src.pos
            yield number, length
            if src.pos != start + length:
                raise AssertionError("a length-delimited field was not taken whole")
        elif wire == _VARINT:
            _read_varint(src)
        elif wire in (_I64, _I32):
            src.take(8 if wire == _I64 else 4)
        else:
            raise ValueError(f"field {number}: wire type {wire}")
        if src.pos > end:
            raise ValueError(f"field {number} runs past its message")


def _array_record(src: _Buffer | _Stream, end: int) -> Iterator[tuple[str, str, Any]]:
    """(key, stype, npy data) of each ArrayRecord{items: [Item{key, value: Array}]} item."""
    for number, length in _fields(src, end):
        if number != 1:
            src.take(length)
            continue
        known = _known_item(src, length) if isinstance(src, _Buffer) else None
        if known is not None:
            yield known
            continue
        start = src.pos
        key, stype, data, data_at = "", "", b"", -1
        for item_field, item_length in _fields(src, src.pos + length):
            if item_field == 1:
                key = str(src.take(item_length), "utf-8")
            elif item_field == 2:
                for array_field, array_length in _fields(src, src.pos + item_length):
                    if array_field == 3:
                        stype = str(src.take(array_length), "utf-8")
                    elif array_field == 4:
                        data_at = src.pos
                        data = src.take(array_length)
                    else:
                        src.take(array_length)  # dtype and shape: the npy header says them
            else:
                src.take(item_length)
        if isinstance(src, _Buffer) and data_at + len(data) == start + length:
            _remember_item(bytes(src.buf[start:data_at]), length, key, stype)
        yield key, stype, data


# Items read before, by their length: (the bytes before their data, key, stype). An item whose
# data ends it (as every item our writer and Flower's write) and that begins with the same
# bytes as one read before is the same key and stype: its fields are not parsed again, which
# was most of reading a frame (a read call or a slice per tag and length; a quarter of an LA's
# CPU with 1000 children). Only frames in memory are matched: a stream cannot look ahead.
_ITEMS_READ: dict[int, list[tuple[bytes, str, str]]] = {}
_ITEM_HEAD_MAX = 512
_SAME_LENGTH_MAX = 4


def _known_item(src: _Buffer, length: int) -> tuple[str, str, Any] | None:
    for head, key, stype in _ITEMS_READ.get(length, ()):
        if src.buf[src.pos:src.pos + len(head)] == head:
            src.pos += len(head)
            return key, stype, src.take(length - len(head))
    return None


def _remember_item(head: bytes, length: int, key: str, stype: str) -> None:
    # Bounded whatever frames come: heads of _ITEM_HEAD_MAX bytes at most (a model's are
    # about 250), up to _SAME_LENGTH_MAX of each length, _HEADERS_MAX lengths.
    if len(head) > _ITEM_HEAD_MAX:
        return
    same_length = _ITEMS_READ.get(length)
    if same_length is None:
        if len(_ITEMS_READ) < _HEADERS_MAX:
            _ITEMS_READ[length] = [(head, key, stype)]
    elif len(same_length) < _SAME_LENGTH_MAX:
        same_length.append((head, key, stype))


# ---------------------------------------------------------------- link byte counters
class LinkCounters:
    """Bytes sent to and received from each peer, as counted at the transport."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._links: dict[str, list[int]] = {}

    def add(self, peer: str, sent: int, received: int) -> None:
        with self._lock:
            link = self._links.setdefault(peer, [0, 0])
            link[0] += sent
            link[1] += received

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {p: {"sent_bytes": s, "received_bytes": r} for p, (s, r) in self._links.items()}


# ---------------------------------------------------------------- tasks and updates
# Task header: {task_id, type: "train" | "evaluate", global_round, local_round, config}; both
# types carry the model. `config` is a Flower ConfigRecord as JSON and always holds
# "server-round" (= global_round) and "local-round" (0 in a task from the GA).
# Update headers (child -> parent), one of:
#   train:    {task_id, name, num_examples, metrics, histogram, train_time_s} + the model
#   evaluate: {task_id, name, num_examples, metrics}, no model
#   error:    {task_id, name, error: "<one line>"}, no model (the child's handler failed)
#   abstain:  {task_id, name, abstain: true}, no model (an LA none of whose clients answered)
# `metrics` is a Flower MetricRecord as JSON; metrics["num-examples"] == num_examples.
TRAIN, EVALUATE = "train", "evaluate"
NUM_EXAMPLES = "num-examples"  # Flower's weighting key in a MetricRecord


def encode_task(
    task_id: str, kind: str, global_round: int, local_round: int, config: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
) -> bytes:
    header = {"task_id": task_id, "type": kind, "global_round": global_round,
              "local_round": local_round, "config": dict(config)}
    return encode_frame(header, arrays)


def train_update(task_id: str, num_examples: int, metrics: Mapping[str, Any],
                 histogram: Mapping[str, int] | None = None,
                 train_time_s: float = 0.0) -> dict[str, Any]:
    """The header of a train reply (send it with the trained model)."""
    return {"task_id": task_id, "num_examples": num_examples,
            "metrics": {**metrics, NUM_EXAMPLES: num_examples},
            "histogram": dict(histogram or {}), "train_time_s": train_time_s}


def evaluate_update(task_id: str, num_examples: int, metrics: Mapping[str, Any]
                    ) -> dict[str, Any]:
    """The header of an evaluate reply (sent without a model)."""
    return {"task_id": task_id, "num_examples": num_examples,
            "metrics": {**metrics, NUM_EXAMPLES: num_examples}}


def error_update(task_id: str, error: str) -> dict[str, Any]:
    """The header of an error reply (sent without a model)."""
    lines = str(error).strip().splitlines()
    return {"task_id": task_id, "error": lines[0] if lines else "error"}


def abstain_update(task_id: str) -> dict[str, Any]:
    return {"task_id": task_id, "abstain": True}


@dataclass
class Update:
    """A child's reply as the aggregator reads it. `invalid` says why it cannot be used."""

    task_id: str
    arrays: Arrays | None
    num_examples: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    histogram: dict[str, int] = field(default_factory=dict)
    train_time_s: float = 0.0
    error: str | None = None
    abstain: bool = False
    invalid: str | None = None


# Bounds on every number in an update header (docs/architecture.md, "Update bounds"). Counts are
# integers below 2^53, where every integer is still exact as a float; JSON's 1e400, NaN and
# Infinity arrive as Python floats (inf, nan) and are refused. A metric's magnitude stays so far
# below float64's 1.8e308 that a count-weighted sum of metrics never overflows.
MAX_COUNT = 2**53 - 1
MAX_METRIC = 1e200


def _is_count(value: Any, minimum: int = 1) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and minimum <= value <= MAX_COUNT)


def _is_metric(value: Any) -> bool:
    def scalar(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        return abs(v) <= (MAX_COUNT if isinstance(v, int) else MAX_METRIC)  # False for NaN

    if isinstance(value, list):
        return all(scalar(v) for v in value) and len({type(v) for v in value}) <= 1
    return scalar(value)


def _shown(value: Any) -> str:
    """`value` for a one-line reason: a 400-digit integer is not read by anyone."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def parse_declared(value: Any) -> int | None:
    """The example count a child declares at join: None when it declares none; ValueError
    unless a positive integer below 2^53."""
    if value is None:
        return None
    if not _is_count(value):
        raise ValueError(f"num_examples must be a positive integer below 2^53, got {_shown(value)}")
    return value


def parse_update(header: dict[str, Any], arrays: Arrays | None) -> Update:
    """Read an update header; never raises (a bad one comes back with `invalid` set). Every
    number in it must be finite and in bounds (MAX_COUNT, MAX_METRIC)."""
    update = Update(task_id=str(header.get("task_id", "")), arrays=arrays)
    if header.get("abstain") is True or "error" in header:
        if arrays is not None:
            update.invalid = "an abstain or error reply carries no model"
        elif header.get("abstain") is True:
            update.abstain = True
        else:
            lines = str(header["error"]).strip().splitlines()
            update.error = lines[0][:500] if lines else "error"
        return update
    num_examples = header.get("num_examples")
    if not _is_count(num_examples):
        update.invalid = (f"num_examples must be a positive integer below 2^53, "
                          f"got {_shown(num_examples)}")
        return update
    update.num_examples = num_examples
    metrics = header.get("metrics", {})
    if not isinstance(metrics, dict) or not all(
        isinstance(k, str) and _is_metric(v) for k, v in metrics.items()
    ):
        update.invalid = ("metrics must map names to finite numbers (or lists of one number "
                          f"type) of magnitude at most {MAX_METRIC:g}")
        return update
    if metrics.get(NUM_EXAMPLES, num_examples) != num_examples:
        update.invalid = (f"metrics {NUM_EXAMPLES} {metrics[NUM_EXAMPLES]!r} differs from "
                          f"num_examples {num_examples}")
        return update
    update.metrics = {**metrics, NUM_EXAMPLES: num_examples}
    histogram = header.get("histogram") or {}
    if not isinstance(histogram, dict) or not all(_is_count(v, 0) for v in histogram.values()):
        update.invalid = "histogram must map labels to counts (integers from 0 to 2^53)"
        return update
    update.histogram = {str(k): v for k, v in histogram.items()}
    train_time = header.get("train_time_s", 0.0)
    if not (isinstance(train_time, int | float) and not isinstance(train_time, bool)
            and 0 <= train_time <= MAX_METRIC):
        update.invalid = f"train_time_s must be a finite number >= 0, got {_shown(train_time)}"
        return update
    update.train_time_s = float(train_time)
    return update


# ---------------------------------------------------------------- aggregator side
class Aggregator(Protocol):
    """What an aggregator (GA, LA) does for the protocol's four calls."""

    name: str

    def join(self, child: str, role: str, num_examples: int | None) -> None:
        """`num_examples`: what the child declares it trains on (None: nothing declared)."""

    def next_task(self, child: str, after: str, timeout: float) -> bytes | str | None:
        """A task frame, FINISHED, or None when nothing came within `timeout`."""

    def submit(self, child: str, update: Update) -> Reply:
        """Take one update; `accepted_reply` / `rejected_reply` build the answer."""

    def leave(self, child: str) -> None: ...


FINISHED = "finished"


def _json_reply(status: int, payload: dict[str, Any], peer: str | None) -> Reply:
    return Reply(status, json.dumps(payload).encode(), JSON_TYPE, peer)


def accepted_reply(child: str) -> Reply:
    return _json_reply(200, {"accepted": True}, child)


def abstained_reply(child: str) -> Reply:
    return _json_reply(200, {"accepted": False, "reason": "abstained"}, child)


def error_recorded_reply(child: str) -> Reply:
    return _json_reply(200, {"accepted": False, "reason": "error recorded"}, child)


def rejected_reply(child: str, reason: str, stale: bool = False) -> Reply:
    # 409: the task is no longer open (not the child's fault); 422: the update itself is bad.
    return _json_reply(409 if stale else 422, {"accepted": False, "reason": reason}, child)


def _json_object(body: bytes) -> dict[str, Any]:
    """The JSON object in a request body; ValueError if it is none."""
    try:
        msg = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ValueError("body is not a JSON object")
    return msg


def aggregator_routes(
    agg: Aggregator, admit: Callable[[Peer | None, str], str | None]
) -> dict[tuple[str, str], Callable[..., Reply]]:
    """The four calls. `admit(peer, name)`: why the caller may not speak as child `name`
    (answered 403), or None (access.Access.child)."""
    def join(query: dict[str, str], body: bytes, peer: Peer | None) -> Reply:
        try:
            msg = _json_object(body)
            declared = parse_declared(msg.get("num_examples"))
        except ValueError as exc:
            return _json_reply(400, {"error": str(exc)}, None)
        child = str(msg.get("name", ""))
        if not child:
            return _json_reply(400, {"error": "name missing"}, None)
        refusal = admit(peer, child)
        if refusal is not None:
            return forbidden("POST /fl/join", peer, refusal)
        agg.join(child, str(msg.get("role", "")), declared)
        return _json_reply(200, {"name": agg.name}, child)

    def task(query: dict[str, str], body: bytes, peer: Peer | None) -> Reply:
        child = query.get("name", "")
        if not child:
            return _json_reply(400, {"error": "name missing"}, None)
        refusal = admit(peer, child)
        if refusal is not None:
            return forbidden("GET /fl/task", peer, refusal)
        result = agg.next_task(child, query.get("after", ""), POLL_HOLD_S)
        if result is None:
            return Reply(204, b"", JSON_TYPE, child)
        if result == FINISHED:
            return _json_reply(200, {"finished": True}, child)
        return Reply(200, result, FRAME_TYPE, child)

    def update(query: dict[str, str], body: bytes, peer: Peer | None) -> Reply:
        try:
            header, arrays = decode_frame(body)
        except ValueError as exc:
            return _json_reply(400, {"accepted": False, "reason": str(exc)}, None)
        child = str(header.get("name", ""))
        if not child:
            return _json_reply(400, {"accepted": False, "reason": "name missing"}, None)
        refusal = admit(peer, child)
        if refusal is not None:
            return forbidden("POST /fl/update", peer, refusal)
        return agg.submit(child, parse_update(header, arrays))

    def leave(query: dict[str, str], body: bytes, peer: Peer | None) -> Reply:
        try:
            child = str(_json_object(body).get("name", ""))
        except ValueError as exc:
            return _json_reply(400, {"error": str(exc)}, None)
        refusal = admit(peer, child)
        if refusal is not None:
            return forbidden("POST /fl/leave", peer, refusal)
        agg.leave(child)
        return _json_reply(200, {}, child or None)

    return {
        ("POST", "/fl/join"): join,
        ("GET", "/fl/task"): task,
        ("POST", "/fl/update"): update,
        ("POST", "/fl/leave"): leave,
    }


# ---------------------------------------------------------------- child side
class _CountingResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.counter = CountingReader(self.fp)
        self.fp = self.counter


class _CountingMixin:
    response_class = _CountingResponse
    sent = 0

    def send(self, data: Any) -> None:
        self.sent += len(data)
        super().send(data)  # type: ignore[misc]


class _Connection(_CountingMixin, http.client.HTTPConnection):
    pass


class _TLSConnection(_CountingMixin, http.client.HTTPSConnection):
    pass


class ParentUnavailable(Exception):
    """The parent could not be reached or answered with an error."""


def client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """A child's side of mutual TLS: shows its parent `cert` and trusts only a parent whose
    certificate `ca` signed for the name or address it dials (no system CAs)."""
    return load_identity(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert, key, ca)


class ParentLink:
    """One child's persistent connection to its parent aggregator."""

    def __init__(
        self, address: tuple[str, int], name: str, role: str, links: LinkCounters,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`tls`: a `client_context` (None: plain HTTP)."""
        self.address = address
        self.name = name
        self.role = role
        self.links = links
        self.peer = f"{address[0]}:{address[1]}"  # until the parent tells us its name
        self._tls = tls
        self._conn: _Connection | _TLSConnection | None = None
        self._lock = threading.Lock()  # guards _conn against abort() from another thread

    def _connection(self, timeout: float) -> _Connection | _TLSConnection:
        with self._lock:
            if self._conn is None:
                host, port = self.address
                if self._tls is not None:
                    self._conn = _TLSConnection(host, port, timeout=timeout, context=self._tls)
                else:
                    self._conn = _Connection(host, port, timeout=timeout)
            conn = self._conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _exchange(
        self, method: str, path: str, body: bytes | list[bytes | memoryview],
        content_type: str, timeout: float,
    ) -> tuple[int, str, Any, int, int]:
        """One request/response: (status, content type, body, bytes sent, bytes received).
        A `body` given as pieces (frame_parts) is sent piece by piece, never joined. A frame
        answered with 200 comes back read (read_frame's (header, arrays)), any other body as
        bytes. A frame that ends early (the parent died while sending it) or does not parse is
        a ParentUnavailable, as a broken connection is: the child retries, it does not die
        (a pool of 500 virtual clients ended with its LA's death before)."""
        conn = self._connection(timeout)
        sent_before = conn.sent
        headers = {"Content-Type": content_type}
        if isinstance(body, list):
            headers["Content-Length"] = str(sum(memoryview(part).nbytes for part in body))
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            content_type = response.getheader("Content-Type", "")
            if (response.status == 200 and content_type == FRAME_TYPE
                    and response.length is not None):
                data: Any = read_frame(response.read, response.length)
                if response.length:
                    raise ValueError("frame ends before its body")
            else:
                data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ParentUnavailable(f"{self.peer}: {exc or type(exc).__name__}") from None
        except ValueError as exc:
            self.close()  # the rest of the body is still unread
            raise ParentUnavailable(f"{self.peer}: unreadable frame: {exc}") from None
        return response.status, content_type, data, conn.sent - sent_before, response.counter.count

    def _request(
        self, method: str, path: str, body: bytes | list[bytes | memoryview],
        content_type: str, timeout: float,
    ) -> tuple[int, str, Any]:
        status, ctype, data, sent, received = self._exchange(method, path, body, content_type,
                                                             timeout)
        self.links.add(self.peer, sent, received)
        return status, ctype, data

    def _json_reply(self, path: str, data: bytes) -> dict[str, Any]:
        """The parent's JSON reply; one that does not parse (e.g. a connection broken mid-reply
        by a parent switch's abort) is a ParentUnavailable, never an exception that ends the
        child's loop."""
        try:
            reply = json.loads(data or b"{}")
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            self.close()
            raise ParentUnavailable(f"{self.peer}{path}: unreadable reply {data[:40]!r}")
        return reply

    def _post_json(self, path: str, payload: dict[str, Any], timeout: float = 30.0) -> Any:
        status, _, data = self._request("POST", path, json.dumps(payload).encode(), JSON_TYPE,
                                        timeout)
        if status != 200:
            raise ParentUnavailable(f"{self.peer}{path}: HTTP {status} {data[:200]!r}")
        return self._json_reply(path, data)

    def join(self, num_examples: int | None = None) -> str:
        """Register with the parent, declaring `num_examples` (the examples this child trains
        on) if given; returns (and from now on counts bytes under) the parent's name. Joining
        again re-declares."""
        msg: dict[str, Any] = {"name": self.name, "role": self.role}
        if num_examples is not None:
            msg["num_examples"] = num_examples
        body = json.dumps(msg).encode()
        status, _, data, sent, received = self._exchange("POST", "/fl/join", body, JSON_TYPE,
                                                         30.0)
        if status != 200:
            raise ParentUnavailable(f"{self.peer}/fl/join: HTTP {status} {data[:200]!r}")
        name = self._json_reply("/fl/join", data).get("name")
        if not isinstance(name, str) or not name:
            raise ParentUnavailable(f"{self.peer}/fl/join: the reply names no parent")
        self.peer = name
        self.links.add(self.peer, sent, received)
        return self.peer

    def poll_task(self, after: str) -> tuple[dict[str, Any], Arrays] | str | None:
        """Long-poll: (header, arrays) of a new task, FINISHED, or None (nothing yet)."""
        query = urlencode({"name": self.name, "after": after})
        status, ctype, data = self._request("GET", f"/fl/task?{query}", b"", JSON_TYPE,
                                            POLL_HOLD_S + 15.0)
        if status == 204:
            return None
        if status != 200:
            raise ParentUnavailable(f"{self.peer}/fl/task: HTTP {status} {data[:200]!r}")
        if ctype == FRAME_TYPE:
            header, arrays = data  # read off the socket by _exchange
            if arrays is None:
                raise ParentUnavailable(f"{self.peer}: task without a model")
            return header, arrays
        return FINISHED if self._json_reply("/fl/task", data).get("finished") else None

    def send_update(
        self, header: dict[str, Any], arrays: Mapping[str, np.ndarray] | None
    ) -> tuple[bool, str]:
        """(accepted, reason). `header` from train_update, evaluate_update, error_update or
        abstain_update; the model goes with a train update only."""
        # Sent in pieces: a model-sized frame is never assembled (one copy of it saved).
        frame = frame_parts({**header, "name": self.name}, arrays)
        status, _, data = self._request("POST", "/fl/update", frame, FRAME_TYPE, 60.0)
        if status not in (200, 409, 422, 400):
            raise ParentUnavailable(f"{self.peer}/fl/update: HTTP {status} {data[:200]!r}")
        reply = self._json_reply("/fl/update", data)
        return bool(reply.get("accepted")), str(reply.get("reason", ""))

    def leave(self) -> None:
        self._post_json("/fl/leave", {"name": self.name}, timeout=5.0)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def abort(self) -> None:
        """Break a blocked request from another thread (e.g. a long poll on a parent we leave)."""
        with self._lock:
            sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
