"""Per-round framework overhead of fl_service (flat and HFL) beside plain Flower 1.42 flat FL.

    .venv/bin/python bench/round_overhead.py [--quick] [--mtls-only]

Everything runs on loopback as real processes, with the ~1M-parameter CIFAR-10 CNN and one SGD
step of local training (bench/overhead_task.py), so a round is almost all overhead.
Overhead of a round = its wall time minus the slowest participant's training time; the figure is
the median over the steady rounds (the first WARMUP rounds, which include connecting and torch's
first-call costs, are left out).
- flat: GA + CLIENTS clients; GA wall time per global round (task out, updates in, aggregate).
- HFL: GA + 2 LAs x 2 clients, LOCAL_ROUNDS local rounds per global round; per local round =
  (GA round wall - the slowest LA's summed per-local-round slowest training) / LOCAL_ROUNDS.
  Measured twice: clients on the built-in app running the bench task (`task: overhead_task`),
  and clients on a Flower ClientApp written as Flower users write them (bench/flower_app's
  `client_app`: a new model per message, `to_torch_state_dict`, `ArrayRecord(state_dict)`),
  so the second figure includes what Flower's Message API costs inside the app.
- HFL with mutual TLS: the built-in HFL setup again, every service holding a certificate of a
  throwaway CA (bench/throwaway_pki.py), so every link is mTLS as placed by default; its
  overhead per local round beside plain HTTP's, their ratio, and the CPU all services use per
  local round in each mode (which the machine's other work does not stretch as it does wall
  time). `--mtls-only` runs just these: plain, mTLS, mTLS, plain, each mode's runs pooled, so
  a drift in the shared machine's load hits both alike.
- one client task in-process (no network, no other process): decode, the runner's call of the
  app, encode, minus training; for both apps, so the app's own share is seen apart from ours.
- plain Flower: the same model, clients and training through flwr's legacy start_server /
  start_client (bench/plain_flower.py) and through its deployment engine (SuperLink +
  SuperNodes + `flwr run`); the faster is plain Flower's figure.
Prints where our overhead goes, and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import overhead_task  # noqa: E402
from throwaway_pki import CONTROLLER_ROLE, ThrowawayCA  # noqa: E402

from fl_service.config import load_config  # noqa: E402
from fl_service.flower_app import ClientRunner  # noqa: E402
from fl_service.http_server import server_context  # noqa: E402
from fl_service.transport import (  # noqa: E402
    client_context,
    decode_frame,
    encode_frame,
    encode_task,
)

CLIENTS = 4
LAS = 2  # HFL: the clients split evenly between this many LAs
LOCAL_ROUNDS = 2
# Model frames an HFL local round moves: a task to and an update from every client, and once per
# global round a task to and an update from every LA.
FRAMES_PER_LOCAL_ROUND = 2 * CLIENTS + 2 * LAS / LOCAL_ROUNDS
WARMUP = 2
TRAINING = {"task": "overhead_task", "seed": 0, "batch_size": 16, "learning_rate": 0.01,
            "threads": 1}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env() -> dict[str, str]:
    path = os.pathsep.join([str(BENCH), str(ROOT), os.environ.get("PYTHONPATH", "")])
    # Flower's SuperLink and SuperNode start their helpers (flower-superexec, ...) from PATH.
    bin_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PYTHONPATH": path, "PATH": bin_path, "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1"}


class Processes:
    def __init__(self, root: Path, ca: ThrowawayCA | None = None) -> None:
        """With `ca`, every service gets a certificate of it (mutual TLS on every link) and
        /status is read as the controller."""
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.ca = ca
        self.status_tls = None
        if ca is not None:
            files = ca.issue("hfl-controller", CONTROLLER_ROLE)
            self.status_tls = client_context(files["tls_cert"], files["tls_key"],
                                             files["tls_ca"])

    def start(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = (self.root / f"{log_name}.log").open("ab")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                                cwd=self.root)
        self.procs.append(proc)
        return proc

    def service(self, role: str, name: str, **cfg: object) -> int:
        port = free_port()
        config = {"name": name, "port": port, "state_dir": str(self.root / name), **TRAINING,
                  **(self.ca.issue(name, role) if self.ca else {}), **cfg}
        path = self.root / f"{name}.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        self.start([sys.executable, "-m", "fl_service", role, "--config", str(path)], name)
        return port

    def cpu_seconds(self) -> float:
        """The CPU time (user and system) its processes have used so far (Linux /proc)."""
        total = 0
        for proc in self.procs:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def wait_status(port: int, procs: Processes, timeout: float,
                done: Callable[[dict], bool]) -> None:
    """Poll the GA's /status until `done(status)`, over one kept-alive connection: a new TLS
    handshake per poll would load the GA being measured."""
    deadline = time.monotonic() + timeout
    conn: http.client.HTTPConnection | None = None
    try:
        while time.monotonic() < deadline:
            dead = [p.args for p in procs.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a process exited early: {dead[0]}")
            try:
                if conn is None:
                    conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=5,
                                                        context=procs.status_tls)
                            if procs.status_tls else
                            http.client.HTTPConnection("127.0.0.1", port, timeout=5))
                conn.request("GET", "/status")
                if done(json.loads(conn.getresponse().read())):
                    return
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None  # not up yet, or the connection went: a new one next time
            time.sleep(0.1)
    finally:
        if conn is not None:
            conn.close()
    raise TimeoutError(f"GA on port {port}: not done within {timeout}s")


def wait_finished(port: int, procs: Processes, timeout: float) -> None:
    wait_status(port, procs, timeout, lambda status: status["state"] == "finished")


def wait_listening(port: int, procs: Processes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs.procs):
            raise RuntimeError(f"a process exited while waiting for port {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_flat(root: Path, rounds: int) -> list[dict]:
    procs = Processes(root / "flat")
    procs.root.mkdir()
    try:
        ga = procs.service("global_aggregator", "ga", global_rounds=rounds,
                           min_participants=CLIENTS, round_timeout_s=120)
        for i in range(CLIENTS):
            procs.service("client", f"c{i}", parent=f"127.0.0.1:{ga}")
        wait_finished(ga, procs, timeout=60 + 20 * rounds)
        return read_results(procs.root / "ga" / "results.jsonl")
    finally:
        procs.stop()


# Clients on a Flower ClientApp (Message API) instead of the built-in app: bench/flower_app.
CLIENT_APP = {"app_dir": str(BENCH / "flower_app"), "client_app": "flower_bench_app:client_app"}


class HflRun(NamedTuple):
    ga: list[dict]  # the GA's results lines
    la0: list[dict]  # la0's
    cpu_s: float  # CPU seconds of all services per steady local round (training included)

    @property
    def over(self) -> list[float]:
        return per_local_round(self.ga)


def run_hfl(root: Path, rounds: int, folder: str = "hfl", client: dict | None = None,
            ca: ThrowawayCA | None = None) -> HflRun:
    """GA + 2 LAs x 2 clients; with `ca`, mutual TLS on every link."""
    procs = Processes(root / folder, ca)
    procs.root.mkdir()
    try:
        ga = procs.service("global_aggregator", "ga", global_rounds=rounds, min_participants=LAS,
                           round_timeout_s=120)
        las = [procs.service("local_aggregator", f"la{j}", parent=f"127.0.0.1:{ga}",
                             local_rounds=LOCAL_ROUNDS, min_participants=2, round_timeout_s=60)
               for j in range(LAS)]
        for i in range(CLIENTS):
            procs.service("client", f"c{i}", parent=f"127.0.0.1:{las[i // (CLIENTS // LAS)]}",
                          **(client or {}))
        timeout = 60 + 30 * rounds
        wait_status(ga, procs, timeout, lambda status: status["global_round"] > WARMUP)
        cpu_before = procs.cpu_seconds()  # the first steady round has just begun
        wait_finished(ga, procs, timeout)
        cpu = (procs.cpu_seconds() - cpu_before) / ((rounds - WARMUP) * LOCAL_ROUNDS)
        return HflRun(read_results(procs.root / "ga" / "results.jsonl"),
                      read_results(procs.root / "la0" / "results.jsonl"), cpu)
    finally:
        procs.stop()


def run_flower_legacy(root: Path, rounds: int) -> list[dict]:
    procs = Processes(root / "flower_legacy")
    procs.root.mkdir()
    out = procs.root / "rounds.jsonl"
    port = free_port()
    script = str(BENCH / "plain_flower.py")
    try:
        server = procs.start([sys.executable, script, "legacy-server", "--port", str(port),
                              "--rounds", str(rounds), "--clients", str(CLIENTS), "--out",
                              str(out)], "server")
        for i in range(CLIENTS):
            procs.start([sys.executable, script, "legacy-client", "--port", str(port), "--id",
                         str(i)], f"client{i}")
        server.wait(timeout=60 + 20 * rounds)
        return read_results(out)
    finally:
        procs.stop()


@contextlib.contextmanager
def flower_deployment(base: Path, app: Path, clients: int, run_config: str
                      ) -> Iterator[tuple[Processes, subprocess.Popen]]:
    """Flower's own runtime on loopback: a SuperLink, `clients` SuperNodes (node config
    partition-id i, num-partitions `clients`) and `flwr run <app> --stream` with `run_config`.
    Yields the processes and the `flwr run` process; logs go to `base/<name>.log`. Also used by
    tests/integration/test_flower_app_native.py."""
    (base / "flwr_home").mkdir(parents=True)
    port = free_port()
    (base / "flwr_home" / "config.toml").write_text(
        f'[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    os.environ["FLWR_HOME"] = str(base / "flwr_home")  # child_env() passes it on
    procs = Processes(base)
    bin_dir = Path(sys.executable).parent
    try:
        # No `uv sync` of the app's dependencies: they are installed, and there is no network.
        procs.start([str(bin_dir / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                     "--port", str(port), "--disable-runtime-dependency-installation"],
                    "superlink")
        wait_listening(port, procs, timeout=120)
        for i in range(clients):
            procs.start([str(bin_dir / "flower-supernode"), "--insecure", "--superlink",
                         f"127.0.0.1:{port}", "--port", str(free_port()), "--node-config",
                         f"partition-id={i} num-partitions={clients}"], f"supernode{i}")
        runner = procs.start([str(bin_dir / "flwr"), "run", str(app), "bench", "--run-config",
                              run_config, "--stream"], "flwr_run")
        yield procs, runner
    finally:
        os.environ.pop("FLWR_HOME", None)
        procs.stop()


def run_flower_deployment(root: Path, rounds: int) -> list[dict]:
    """SuperLink + one SuperNode per client + `flwr run` of bench/flower_app (Message API)."""
    base = root / "flower_deployment"
    app = base / "app"
    shutil.copytree(BENCH / "flower_app", app)
    out = base / "rounds.jsonl"
    run_config = f'num-server-rounds={rounds} clients={CLIENTS} out="{out}"'
    with flower_deployment(base, app, CLIENTS, run_config) as (_, runner):
        deadline = time.monotonic() + 180 + 90 * rounds
        while time.monotonic() < deadline:
            done = len(read_results(out)) if out.exists() else 0
            if done >= rounds:
                return read_results(out)
            if runner.poll() is not None and done == 0:
                tail = (base / "flwr_run.log").read_text(errors="replace")[-600:]
                raise RuntimeError(f"flwr run exited with {runner.returncode}: {tail}")
            time.sleep(0.5)
        done = len(read_results(out)) if out.exists() else 0
        reached = [line for line in (base / "flwr_run.log").read_text(errors="replace")
                   .splitlines() if "[ROUND" in line]
        raise TimeoutError(
            f"{done} of {rounds} rounds finished within {180 + 90 * rounds} s (last stage: "
            f"{reached[-1].split(':', 1)[-1].strip() if reached else 'no round started'}; "
            f"load average {os.getloadavg()[0]:.0f} on {os.cpu_count()} cores). The deployment "
            f"engine starts a flwr-clientapp process per message, which imports torch and flwr; "
            f"on this shared machine that alone outlasted the deadline")


def steady(values: list[float]) -> float:
    return statistics.median(values[WARMUP:] if len(values) > WARMUP else values)


def per_local_round(ga_lines: list[dict]) -> list[float]:
    """An HFL run's overhead per local round, one value per global round."""
    return [(r["wall_time_s"] - r["train_time_s"]) / LOCAL_ROUNDS for r in ga_lines]


def hfl_runs(root: Path, rounds: int, order: list[bool], frame_bytes: int
             ) -> tuple[dict[bool, list[HflRun]], float]:
    """HFL runs in `order` (True: mutual TLS on every link, False: plain HTTP), by mode; and
    what mutual TLS costs one frame of `frame_bytes` in CPU (tls_cpu_per_frame)."""
    ca = ThrowawayCA(root / "pki")
    frame_cpu_s = tls_cpu_per_frame(ca, frame_bytes)
    runs: dict[bool, list[HflRun]] = {False: [], True: []}
    for i, tls in enumerate(order):
        folder = f"hfl_{'mtls' if tls else 'plain'}_{i}"
        runs[tls].append(run_hfl(root, rounds, folder, ca=ca if tls else None))
    return runs, frame_cpu_s


def pooled(runs: list[HflRun]) -> float:
    """The median overhead per local round over the steady rounds of all `runs`."""
    return statistics.median(x for run in runs for x in run.over[WARMUP:])


def per_round_text(runs: list[HflRun]) -> str:
    return " | ".join(" ".join(f"{x:.3f}" for x in run.over) for run in runs)


def mtls_figures(plain: list[HflRun], mtls: list[HflRun], frame_cpu_s: float
                 ) -> dict[str, float]:
    """Print mTLS beside plain HTTP (the same HFL setup; each mode's runs pooled) and where the
    difference goes; their figures for the JSON line."""
    plain_s, mtls_s = pooled(plain), pooled(mtls)
    plain_cpu = statistics.mean(run.cpu_s for run in plain)
    mtls_cpu = statistics.mean(run.cpu_s for run in mtls)
    print(f"HFL with mutual TLS on every link ({len(mtls)} run(s)): overhead per local round "
          f"{mtls_s:.4f} s (per global round / {LOCAL_ROUNDS}: {per_round_text(mtls)}); "
          f"{mtls_s - plain_s:+.4f} s, {mtls_s / plain_s:.2f}x plain HTTP's {plain_s:.4f} s")
    print(f"  CPU of all {1 + LAS + CLIENTS} services per local round (training and the GA's "
          f"evaluation included): plain {plain_cpu:.3f} s, mTLS {mtls_cpu:.3f} s "
          f"({mtls_cpu - plain_cpu:+.3f} s); in-process, mutual TLS costs "
          f"{frame_cpu_s * 1000:.1f} ms CPU per model frame (encryption and decryption, both "
          f"ends; {ssl.OPENSSL_VERSION}) and a local round moves {FRAMES_PER_LOCAL_ROUND:g} "
          f"frames ({FRAMES_PER_LOCAL_ROUND * frame_cpu_s:.3f} s)")
    return {"mtls_overhead_s_per_local_round": round(mtls_s, 4),
            "mtls_to_plain_ratio": round(mtls_s / plain_s, 3),
            "hfl_cpu_s_per_local_round": round(plain_cpu, 4),
            "mtls_cpu_s_per_local_round": round(mtls_cpu, 4),
            "mtls_cpu_s_per_frame": round(frame_cpu_s, 4)}


def main_mtls_only(hfl_rounds: int, frame_bytes: int) -> None:
    with tempfile.TemporaryDirectory(prefix="hfl-bench-") as tmp:
        # Plain, mTLS, mTLS, plain: a drift in the shared machine's load hits both modes alike.
        runs, frame_cpu_s = hfl_runs(Path(tmp), hfl_rounds, [False, True, True, False],
                                     frame_bytes)
    plain_s = pooled(runs[False])
    print(f"HFL plain HTTP ({len(runs[False])} runs of {hfl_rounds} global x {LOCAL_ROUNDS} "
          f"local): overhead per local round {plain_s:.4f} s (per global round / "
          f"{LOCAL_ROUNDS}: {per_round_text(runs[False])})")
    figures = mtls_figures(runs[False], runs[True], frame_cpu_s)
    print(json.dumps({"hfl_overhead_s_per_local_round": round(plain_s, 4), **figures}))


def serialization_costs(arrays: dict[str, np.ndarray], repeat: int = 9) -> tuple[float, float]:
    """(encode, decode) seconds of one model frame, best of `repeat`."""
    enc, dec = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        frame = encode_frame({"task_id": "x"}, arrays)
        t1 = time.perf_counter()
        decode_frame(frame)
        dec.append(time.perf_counter() - t1)
        enc.append(t1 - t0)
    return min(enc), min(dec)


def client_call_overhead(root: Path, arrays: dict[str, np.ndarray], client: dict | None = None,
                         repeat: int = 30) -> float:
    """Median seconds one client task costs beyond training, in-process with no network: the
    frame decoded, the runner's call of the app (Message in, reply read back), the update
    encoded. With `client` = CLIENT_APP this is what the Flower ClientApp's own handler adds
    (its model rebuilt, Flower's ArrayRecord conversions) beside our runner's share."""
    path = root / f"call_{len(list(root.glob('call_*')))}.yaml"
    path.write_text(json.dumps({"name": "c0", "port": 1, "parent": "127.0.0.1:1", **TRAINING,
                                **(client or {})}))
    runner = ClientRunner(load_config("client", path))
    runner.warm_up()
    frame = encode_task("t", "train", 1, 1, {"server-round": 1, "local-round": 1}, arrays)
    costs = []
    for i in range(repeat + 3):
        t0 = time.perf_counter()
        header, task_arrays = decode_frame(frame)
        update, out = runner.handle(header, task_arrays)
        encode_frame(update, out)
        if i >= 3:  # the first calls pay torch's first-call costs
            costs.append(time.perf_counter() - t0 - update["train_time_s"])
    return statistics.median(costs)


def loopback_seconds_per_byte(repeat: int = 3) -> float:
    """Raw TCP loopback transfer time per byte (best of `repeat`): a floor for transfer cost."""
    payload = 8 << 20
    return min(_loopback_once(payload)[0] for _ in range(repeat)) / payload


def tls_cpu_per_frame(ca: ThrowawayCA, frame_bytes: int, repeat: int = 7) -> float:
    """The CPU seconds one frame of `frame_bytes` costs over a mutual-TLS loopback connection
    beyond plain TCP, both ends together (median of `repeat`): its records' encryption and
    decryption. Measured as CPU time, so the machine's other work does not count."""
    server_files, client_files = ca.issue("bench-server", "global_aggregator"), ca.issue(
        "bench-client", "client")
    tls = (server_context(server_files["tls_cert"], server_files["tls_key"],
                          server_files["tls_ca"]),
           client_context(client_files["tls_cert"], client_files["tls_key"],
                          client_files["tls_ca"]))
    plain = statistics.median(_loopback_once(frame_bytes)[1] for _ in range(repeat))
    return statistics.median(_loopback_once(frame_bytes, tls)[1] for _ in range(repeat)) - plain


def _loopback_once(payload: int, tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None
                   ) -> tuple[float, float]:
    """(wall, this process's CPU) seconds to send `payload` bytes over a fresh loopback
    connection, with `tls` = (server context, client context) over mutual TLS."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    sender = socket.create_connection(server.getsockname())
    receiver, _ = server.accept()
    if tls is not None:  # both handshakes at once: each side waits for the other
        wrapped: list[ssl.SSLSocket] = []
        handshake = threading.Thread(target=lambda: wrapped.append(
            tls[0].wrap_socket(receiver, server_side=True)))
        handshake.start()
        sender = tls[1].wrap_socket(sender, server_hostname="127.0.0.1")
        handshake.join()
        receiver = wrapped[0]
    data = bytes(payload)
    buffer = bytearray(1 << 20)
    thread = threading.Thread(target=sender.sendall, args=(data,))
    t0, cpu0 = time.perf_counter(), time.process_time()
    thread.start()
    got = 0
    while got < payload:
        got += receiver.recv_into(buffer)
    elapsed = time.perf_counter() - t0
    thread.join()  # the sender's CPU counts too
    cpu = time.process_time() - cpu0
    for s in (sender, receiver, server):
        s.close()
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--mtls-only", action="store_true",
                        help="only the HFL setup with plain HTTP and with mutual TLS")
    args = parser.parse_args()
    flat_rounds, hfl_rounds = (6, 5) if args.quick else (12, 8)

    model = overhead_task.load_model(TRAINING)
    arrays = {k: t.detach().numpy().copy() for k, t in model.state_dict().items()}
    params = sum(p.numel() for p in model.parameters())
    model_bytes = sum(a.nbytes for a in arrays.values())
    if args.mtls_only:
        main_mtls_only(hfl_rounds, len(encode_frame({}, arrays)))
        return
    print(f"model: {params} parameters, {model_bytes / 1e6:.2f} MB float32; "
          f"{CLIENTS} clients, 1 SGD step of {overhead_task.EXAMPLES} images per round")

    # In-process costs first, before the runs' processes load the machine.
    encode_s, decode_s = serialization_costs(arrays)
    per_byte = loopback_seconds_per_byte()

    with tempfile.TemporaryDirectory(prefix="hfl-bench-") as tmp:
        root = Path(tmp)
        builtin_call_s = client_call_overhead(root, arrays)
        app_call_s = client_call_overhead(root, arrays, CLIENT_APP)
        flat = run_flat(root, flat_rounds)
        flat_over = [r["wall_time_s"] - r["train_time_s"] for r in flat]
        plain_hfl = run_hfl(root, hfl_rounds)
        hfl, hfl_over = plain_hfl.ga, plain_hfl.over
        la_over = [r["wall_time_s"] - r["train_time_s"] for r in plain_hfl.la0]
        mtls_runs, frame_cpu_s = hfl_runs(root, hfl_rounds, [True],
                                          len(encode_frame({}, arrays)))
        app_run = run_hfl(root, hfl_rounds, "hfl_client_app", CLIENT_APP)
        app_hfl, app_la0, app_over = app_run.ga, app_run.la0, app_run.over
        legacy = run_flower_legacy(root, flat_rounds)
        legacy_over = [r["wall_time_s"] - r["train_time_s"] for r in legacy]
        try:
            deployment = run_flower_deployment(root, 3 if args.quick else 4)
            deployment_over = [r["wall_time_s"] - r["train_time_s"] for r in deployment]
            deployment_error = ""
        except (RuntimeError, TimeoutError, OSError) as exc:
            deployment_over, deployment_error = [], str(exc)

    flat_s, hfl_s, legacy_s = steady(flat_over), steady(hfl_over), steady(legacy_over)
    print(f"\nflat ({len(flat)} rounds): overhead per round {flat_s:.4f} s "
          f"(per round: {' '.join(f'{x:.3f}' for x in flat_over)})")
    print(f"HFL  ({len(hfl)} global x {LOCAL_ROUNDS} local): overhead per local round "
          f"{hfl_s:.4f} s (per global round / {LOCAL_ROUNDS}: "
          f"{' '.join(f'{x:.3f}' for x in hfl_over)}); LA-level local round alone "
          f"{steady(la_over):.4f} s")
    mtls = mtls_figures([plain_hfl], mtls_runs[True], frame_cpu_s)
    print(f"HFL with a Flower ClientApp ({len(app_hfl)} global x {LOCAL_ROUNDS} local): "
          f"overhead per local round {steady(app_over):.4f} s (per global round / "
          f"{LOCAL_ROUNDS}: {' '.join(f'{x:.3f}' for x in app_over)}); LA-level local round "
          f"alone {steady([r['wall_time_s'] - r['train_time_s'] for r in app_la0]):.4f} s")
    print(f"one client task beyond training, in-process (decode, app call, encode): built-in "
          f"app {builtin_call_s:.4f} s, Flower ClientApp {app_call_s:.4f} s; {CLIENTS} clients "
          f"share {os.cpu_count()} cores, so a round's critical path pays up to "
          f"{CLIENTS / min(CLIENTS, os.cpu_count() or 1):.0f}x the difference")
    print(f"plain Flower legacy start_server ({len(legacy)} rounds): overhead per round "
          f"{legacy_s:.4f} s (per round: {' '.join(f'{x:.3f}' for x in legacy_over)})")
    plain_s = legacy_s
    if deployment_over:
        deployment_s = steady(deployment_over)
        print(f"plain Flower deployment engine ({len(deployment_over)} rounds): overhead per "
              f"round {deployment_s:.4f} s (per round: "
              f"{' '.join(f'{x:.3f}' for x in deployment_over)})")
        plain_s = min(legacy_s, deployment_s)
    else:
        print(f"plain Flower deployment engine: NOT MEASURED: {deployment_error}")

    aggregation = steady([r["aggregation_time_s"] for r in flat])
    # Critical path of a flat round: GA encodes once; a client decodes, (trains,) encodes; the
    # GA decodes the last update and folds it in. Transfer: one model down and one up, at least.
    serialization = encode_s + decode_s + encode_s + decode_s
    transfer = 2 * model_bytes * per_byte
    # What is left: loading arrays into the model, HTTP, thread and process scheduling.
    waiting = max(flat_s - serialization - transfer - aggregation, 0.0)
    print("\nwhere a flat round's overhead goes (critical path; serialization and transfer "
          "measured in-process before the runs):")
    print(f"  serialization  {serialization:.4f} s  (ArrayRecord frame encode {encode_s:.4f} s, "
          f"decode {decode_s:.4f} s; twice each)")
    print(f"  transfer       {transfer:.4f} s  (2 x {model_bytes / 1e6:.1f} MB at raw loopback "
          f"{1 / per_byte / 1e9:.2f} GB/s)")
    print(f"  aggregation    {aggregation:.4f} s  (FedAvg fold, GA, median)")
    between = steady([r["eval_time_s"] for r in flat])
    print(f"  waiting/other  {waiting:.4f} s  (loading arrays into the model, scheduling "
          f"{CLIENTS + 1} processes on {os.cpu_count()} cores, HTTP)")
    print(f"  (not in the round: the GA's central evaluation between rounds, {between:.4f} s, "
          f"and its checkpoint; Flower's figure leaves its evaluate phase out the same way)")
    print(json.dumps({"hfl_overhead_s_per_local_round": round(hfl_s, 4),
                      **mtls,
                      "client_app_overhead_s_per_local_round": round(steady(app_over), 4),
                      "builtin_call_overhead_s": round(builtin_call_s, 4),
                      "client_app_call_overhead_s": round(app_call_s, 4),
                      "flat_overhead_s_per_round": round(flat_s, 4),
                      "plain_flower_overhead_s_per_round": round(plain_s, 4),
                      "model_params": params}))


if __name__ == "__main__":
    main()
