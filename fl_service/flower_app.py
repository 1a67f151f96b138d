"""Run a Flower ClientApp inside the client service: the one path every client task takes.

Loading (`ClientRunner(cfg)`, before any network use; a bad setting is one `ConfigError`
naming its key):
- `app_dir`: a Flower app folder (its `pyproject.toml` with `[tool.flwr.app]`, checked by
  flwr). The folder goes first on `sys.path`; its `[tool.flwr.app.config]` is the base of the
  run config and its `[tool.flwr.app.components].clientapp` the default `client_app`.
- `client_app`: `module:attr` of a `flwr.clientapp.ClientApp`; default the folder's clientapp,
  else the built-in app `fl_service.apps.builtin:app` (the built-in tasks, or a user's
  old-style `task` module; its run config is filled from the service's own keys:
  `fl_service.apps.builtin.run_config`).
- `run_config`: overrides fused over that base exactly as `flwr run --run-config` does
  (`flwr.common.config.fuse_dicts`: a key the app does not declare is an error).

Running: one `Context` for the life of the process (node_config `partition-id` and
`num-partitions` from the service keys `partition_id` / `num_partitions`, and `label-slices`
from `label_slices` when the client states its label mix; `state` survives every
task and every parent switch). Each task becomes a real `Message` (Metadata with message_type
`train` or `evaluate`, message id = task id, group id = global round) whose content is
`{"arrays": ArrayRecord, "config": ConfigRecord}`, exactly what a Flower strategy sends; the app
is called in-process, as Flower's SuperNode runtime calls it (`ClientApp.__call__`). The reply
becomes the update: its ArrayRecord (train) and its MetricRecord, whose `num-examples` is the
update's weight. A handler that raises, or a reply that carries an error or lacks what the
update needs, becomes an error update (header `error`); the client lives on.

Legacy apps, `ClientApp(client_fn=...)` with a NumPyClient or Client: Flower 1.42 keeps their
`client_fn` in the app's private `_call` and registers no Message-API handlers, which is how
`is_legacy` tells them apart. They get the legacy layout (`fitins.parameters`/`fitins.config`,
`evaluateins.*`) and answer with `fitres.*` / `evaluateres.*`, read with flwr's
recorddict_compat; Parameters carry no names, so the reply's arrays take the task's
state_dict names by order.

Copies: a received array is a read-only view of the npy bytes the frame carried, and the
`Array` handed to the app holds those very bytes; a reply's `Array.data` is read back as a view
(`ndarray_view`), so the transport's frame writer makes the only copy on the way out.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from flwr.app import (
    DEFAULT_TTL,
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.config import flatten_dict, fuse_dicts, get_project_config
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.compat.common.recorddict_compat import (
    recorddict_to_evaluateres,
    recorddict_to_fitres,
)

from fl_service.apps import STATE_HISTOGRAM, STATE_TIMING
from fl_service.config import ConfigError
from fl_service.imports import load_object
from fl_service.transport import (
    EVALUATE,
    NUM_EXAMPLES,
    TRAIN,
    Arrays,
    error_update,
    evaluate_update,
    npy_header,
    npy_layout,
    npy_view,
    train_update,
)

log = logging.getLogger("fl_service.flower_app")

BUILTIN_CLIENT_APP = "fl_service.apps.builtin:app"
NPY_STYPE = "numpy.ndarray"  # flwr.common.constant.SType.NUMPY
RUN_ID = 1  # one run per pipeline as far as the app can tell
ERROR_CHARS = 300
R = TypeVar("R")  # a record type


# ---------------------------------------------------------------- loading
def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return (text.splitlines() or [""])[0][:ERROR_CHARS]


@dataclass(frozen=True)
class AppFolder:
    path: Path
    components: dict[str, str]  # [tool.flwr.app.components]
    config: dict[str, Any]  # [tool.flwr.app.config], flattened like Flower does


def load_app_folder(app_dir: str) -> AppFolder | None:
    """Read a Flower app folder and put it first on sys.path; None when `app_dir` is empty."""
    if not app_dir:
        return None
    path = Path(app_dir).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError("app_dir", f"no such folder {path}")
    try:
        project = get_project_config(path)
    except Exception as exc:  # FileNotFoundError, ValueError (invalid fields), TOML errors
        raise ConfigError("app_dir", f"{path}: {_one_line(exc)}") from None
    app = project["tool"]["flwr"]["app"]
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    return AppFolder(path, dict(app.get("components", {})), flatten_dict(app.get("config", {})))


def fuse_run_config(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` (nested tables flattened to dotted keys) over `base`, as `flwr run` fuses."""
    try:
        flat = flatten_dict(dict(overrides))  # ValueError on anything but scalars and tables
    except ValueError as exc:
        raise ConfigError("run_config", _first_line(str(exc))) from None
    try:
        return fuse_dicts(dict(base), flat)
    except ValueError as exc:
        known = ", ".join(sorted(base)) or "none"
        raise ConfigError("run_config", f"{exc} (the app declares: {known})") from None


def is_legacy(app: ClientApp) -> bool:
    """A `ClientApp(client_fn=...)`: flwr 1.42 keeps the client_fn wrapper in `_call`."""
    return getattr(app, "_call", None) is not None


def client_app_path(cfg: Mapping[str, Any], folder: AppFolder | None) -> tuple[str, str]:
    """(module:attr of the client app, the config key it came from)."""
    if cfg.get("client_app"):
        return str(cfg["client_app"]), "client_app"
    if folder is not None:
        if not folder.components.get("clientapp"):
            raise ConfigError("app_dir", f"{folder.path}: no [tool.flwr.app.components] "
                                         "clientapp")
        return str(folder.components["clientapp"]), "app_dir"
    return BUILTIN_CLIENT_APP, "client_app"


def node_id_of(name: str) -> int:
    """A stable node id for a service name (Flower's are random 64-bit integers)."""
    return zlib.crc32(name.encode()) + 2  # never 0 or SUPERLINK_NODE_ID


# ---------------------------------------------------------------- arrays <-> Flower Arrays
def npy_bytes(array: np.ndarray) -> bytes:
    """What np.save writes for `array` (C order), in one copy of the data (np.save and
    BytesIO.getvalue make two)."""
    array = np.asarray(array, order="C")  # keeps 0-d arrays 0-d, unlike ascontiguousarray
    return b"".join((npy_header(array), memoryview(array.reshape(-1)).cast("B")))


def array_from_numpy(array: np.ndarray) -> Array:
    """An npy-typed Flower Array of `array`, in one copy (Array.from_numpy_ndarray makes two)."""
    return _npy_array(array, npy_bytes(array))


# numpy's dtype.__str__ is Python code (~4 us), called for every array of every task.
_dtype_name = functools.lru_cache(maxsize=256)(str)


def _npy_array(array: np.ndarray, data: bytes) -> Array:
    """The npy-typed Flower Array of `array` whose np.save bytes are `data`."""
    return Array(_dtype_name(array.dtype), tuple(int(d) for d in array.shape), NPY_STYPE, data)


def ndarray_view(array: Array) -> np.ndarray:
    """The array an npy-typed Flower Array holds, as a read-only view of its bytes (no copy)."""
    if array.stype != NPY_STYPE:
        raise TypeError(f"unsupported array serialization {array.stype!r}")
    return npy_view(array.data)


def _npy_payload(array: np.ndarray) -> bytes | None:
    """The npy bytes `array` is a view of (what the transport's frame reader returns), else None.

    Checked, not assumed: the bytes must start with an npy header of this dtype and shape and
    end exactly where this array's data ends.
    """
    owner = array.base
    while isinstance(owner, np.ndarray):
        owner = owner.base
    if not isinstance(owner, bytes) or not array.flags.c_contiguous:
        return None
    start = len(owner) - array.nbytes
    if start <= 0 or np.frombuffer(owner, np.uint8).ctypes.data + start != array.ctypes.data:
        return None
    try:
        shape, fortran, dtype, offset = npy_layout(owner)
    except ValueError:
        return None
    if fortran or dtype != array.dtype or shape != array.shape or offset != start:
        return None
    return owner


def array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of `arrays`, reusing the received npy bytes where they are at hand."""
    record = ArrayRecord()
    for key, array in arrays.items():
        payload = _npy_payload(array)
        if payload is None:
            payload = npy_bytes(array)
        record[key] = _npy_array(array, payload)
    return record


def record_arrays(record: ArrayRecord) -> Arrays:
    """name -> read-only view of each Array (no copy)."""
    return {key: ndarray_view(record[key]) for key in record}


# ---------------------------------------------------------------- the runner
class ReplyError(Exception):
    """The app's reply cannot become an update; the message is the update's `error`."""


class ClientRunner:
    """One ClientApp, one Context, for the life of the client process."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        folder = load_app_folder(str(cfg.get("app_dir") or ""))
        self.path, key = client_app_path(cfg, folder)
        app = load_object(self.path, key)
        if not isinstance(app, ClientApp):
            raise ConfigError(key, f"{self.path} is a {type(app).__name__}, not a "
                                   "flwr.clientapp.ClientApp")
        self.app: ClientApp = app
        self.builtin = self.path == BUILTIN_CLIENT_APP
        self.legacy = is_legacy(app)
        base = dict(folder.config) if folder is not None else {}
        self._builtin: Any = None
        if self.builtin:
            from fl_service.apps import builtin

            self._builtin = builtin
            base.update(builtin.run_config(cfg))
        run_config = fuse_run_config(base, cfg.get("run_config") or {})
        node_config = {"partition-id": int(cfg.get("partition_id", 0)),
                       "num-partitions": int(cfg.get("num_partitions", 1))}
        if cfg.get("label_slices"):
            node_config["label-slices"] = str(cfg["label_slices"])
        self.context = Context(run_id=RUN_ID, node_id=node_id_of(str(cfg.get("name", ""))),
                               node_config=node_config, state=RecordDict(),
                               run_config=run_config)
        if self._builtin is not None:
            self._builtin.check(self.context)  # a bad task or device: ValueError naming it

    # ------------------------------------------------------------ what the service reports
    def warm_up(self) -> None:
        """Load what can be loaded before the first task: the built-in app's data and model;
        for a user's app using torch, torch's optimizer imports (seconds on a busy machine,
        which would otherwise land in round 1 and can hit a round timeout; the built-in app
        does not use torch.optim)."""
        if self._builtin is not None:
            self._builtin.prepare(self.context)
            return
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)

    def histogram(self) -> dict[str, int] | None:
        record = state_record(self.context.state, STATE_HISTOGRAM, MetricRecord)
        if record is None:
            return None
        return {str(label): int(count) for label, count in record.items()}

    # ------------------------------------------------------------ one task
    def handle(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None
               ) -> tuple[dict[str, Any], Arrays | None]:
        """(update header, update arrays or None) for one task; never raises on app failures.

        Headers from fl_service.transport: `train_update` (histogram: the app's, from
        context.state, else empty; train_time_s: the app's STATE_TIMING, else the whole call),
        `evaluate_update`, `error_update`.
        """
        kind = str(header.get("type") or TRAIN)
        task_id = str(header.get("task_id", ""))
        if kind not in (TRAIN, EVALUATE):
            return error_update(task_id, f"unknown task type {kind!r}"), None
        names = list(arrays or {})
        message = self._message(header, kind, arrays or {})
        if state_record(self.context.state, STATE_TIMING, MetricRecord) is not None:
            del self.context.state[STATE_TIMING]
        start = time.perf_counter()
        try:
            reply = self.app(message, self.context)
            app_time = time.perf_counter() - start
            metrics, out = self._read_reply(reply, kind, names)
        except Exception as exc:  # the app's own failure: an error update, and we live on
            log.warning("client app failed on task %s: %s", task_id, exc, exc_info=True)
            error = str(exc) if isinstance(exc, ReplyError) else _one_line(exc)
            return error_update(task_id, error[:ERROR_CHARS]), None
        num_examples = metrics[NUM_EXAMPLES]
        if kind == EVALUATE:
            return evaluate_update(task_id, num_examples, metrics), None
        timing = state_record(self.context.state, STATE_TIMING, MetricRecord)
        train_time = float(timing["train_time_s"]) if timing else app_time
        return train_update(task_id, num_examples, metrics, self.histogram(), train_time), out

    def _message(self, header: Mapping[str, Any], kind: str,
                 arrays: Mapping[str, np.ndarray]) -> Message:
        config = ConfigRecord(dict(header.get("config") or {}))
        if self.legacy:
            # Parameters have no names: keys "0".."n-1" in state_dict order, as flwr writes them.
            record = array_record({str(i): a for i, a in enumerate(arrays.values())})
            prefix = "fitins" if kind == TRAIN else "evaluateins"
            content = RecordDict({f"{prefix}.parameters": record, f"{prefix}.config": config})
        else:
            content = RecordDict({"arrays": array_record(arrays), "config": config})
        metadata = Metadata(
            run_id=RUN_ID, message_id=str(header.get("task_id") or ""),
            src_node_id=SUPERLINK_NODE_ID, dst_node_id=self.context.node_id,
            reply_to_message_id="", group_id=str(header.get("global_round", "")),
            created_at=time.time(), ttl=DEFAULT_TTL, message_type=kind,
        )
        return Message(content=content, metadata=metadata)

    def _read_reply(self, reply: Any, kind: str, names: list[str]
                    ) -> tuple[dict[str, Any], Arrays | None]:
        if not isinstance(reply, Message):
            raise ReplyError(f"the app returned a {type(reply).__name__}, not a Message")
        if reply.has_error():
            raise ReplyError(f"the app replied with error {reply.error.code}: "
                             f"{_first_line(reply.error.reason)}")
        if self.legacy:
            return _read_legacy(reply.content, kind, names)
        content = reply.content
        metrics = _metrics(_pick(records_of(content, MetricRecord), "metrics", "MetricRecord",
                                 kind))
        if kind == EVALUATE:
            return metrics, None
        record = _pick(records_of(content, ArrayRecord), "arrays", "ArrayRecord", kind)
        return metrics, record_arrays(record)


# Records of one kind are read from a RecordDict directly, never through its
# metric_records / array_records views: each access of one builds a view that sets every
# record of its kind back into the dict (five a task were a tenth of a millisecond).
def records_of(records: RecordDict, kind: type[R]) -> dict[str, R]:
    """The records of `records` of type `kind`, by key."""
    return {key: record for key, record in records.items() if isinstance(record, kind)}


def state_record(records: RecordDict, key: str, kind: type[R]) -> R | None:
    """The record under `key` if it is of type `kind`, else None."""
    record = records.get(key)
    return record if isinstance(record, kind) else None


def _first_line(text: str | None) -> str:
    return ((text or "").strip().splitlines() or [""])[0][:ERROR_CHARS]


def _pick(records: Mapping[str, Any], key: str, kind_name: str, kind: str) -> Any:
    """The record under `key`, else the only one of its kind (as Flower's strategies accept)."""
    if key in records:
        return records[key]
    if len(records) == 1:
        return next(iter(records.values()))
    found = ", ".join(records) or "none"
    raise ReplyError(f"the {kind} reply needs one {kind_name} ('{key}'); it has: {found}")


def _metrics(record: Mapping[str, Any], num_examples: Any = None) -> dict[str, Any]:
    """A MetricRecord (or legacy metrics) as JSON-able numbers, with an integer num-examples."""
    out = OrderedDict()
    for key, value in record.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[key] = value
        elif isinstance(value, list) and all(isinstance(v, int | float) for v in value):
            out[key] = list(value)
    if num_examples is not None:
        out[NUM_EXAMPLES] = num_examples
    count = out.get(NUM_EXAMPLES)
    if not isinstance(count, int | float) or count != int(count):
        raise ReplyError("the reply's metrics lack an integer 'num-examples' "
                         f"(got {count!r})")
    out[NUM_EXAMPLES] = int(count)
    return dict(out)


def _read_legacy(content: RecordDict, kind: str, names: list[str]
                 ) -> tuple[dict[str, Any], Arrays | None]:
    from flwr.compat.common.typing import Code

    if kind == EVALUATE:
        res = recorddict_to_evaluateres(content)
        if res.status.code != Code.OK:
            raise ReplyError(f"evaluate status {res.status.code.name}: {res.status.message}")
        return _metrics({"loss": float(res.loss), **res.metrics}, res.num_examples), None
    res = recorddict_to_fitres(content, keep_input=True)
    if res.status.code != Code.OK:
        raise ReplyError(f"fit status {res.status.code.name}: {res.status.message}")
    metrics = _metrics(dict(res.metrics), res.num_examples)
    tensors = res.parameters.tensors
    if len(tensors) != len(names):
        raise ReplyError(f"fit returned {len(tensors)} arrays for a model of {len(names)}")
    if res.parameters.tensor_type != NPY_STYPE:
        raise ReplyError(f"fit returned {res.parameters.tensor_type!r} tensors, not numpy")
    arrays = {name: npy_view(data) for name, data in zip(names, tensors, strict=True)}
    return metrics, arrays
