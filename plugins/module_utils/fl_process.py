# Copyright: hfl.orchestration developers
# Apache License 2.0
"""Target-side management of one detached background service in its own folder.

The folder holds ``config.yaml`` (written by the caller), ``digest`` (what the running process
was started with), ``pid``, ``service.log`` and, with mutual TLS, ``tls/`` (the service's key
and certificate and the pipeline's CA, written before a start). ``ensure_running`` decides
between nothing, a reload (SIGHUP: the config changed but not its digest) and a restart (the
digest, which covers its credentials and the revision of its code, changed or the process is
gone); ``ensure_absent`` stops the process and removes the folder.

Two supervisors run the process. ``none``: a detached process (own session) that nothing
restarts after a crash or a reboot. ``systemd``: a system unit ``hfl-<pipeline>-<name>.service``
(``unit_name``) that systemd restarts on failure and starts at boot, logging to the journal; the
unit file is part of what the service runs with, so a new one restarts it. ``auto`` picks systemd
where it runs the host and the services run as root (system units), else ``none``.
Standard library only: it runs on every target host, and importing it must not pull in
Ansible, whose import-time patches (sys.intern) break torch.compile in a process that also
trains (a pytest run of the whole suite).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import time
import urllib.parse

CONFIG, DIGEST, PIDFILE, LOG = "config.yaml", "digest", "pid", "service.log"
ENVIRONMENT = "environment"  # systemd: the unit's EnvironmentFile, in the service's folder
SUPERVISORS = ("auto", "systemd", "none")
UNIT_DIR = "/etc/systemd/system"
STOP_TIMEOUT = 20  # seconds from SIGTERM to SIGKILL, under either supervisor


class ServiceError(Exception):
    """A one-line reason; ``log_tail`` holds the end of the service's log."""

    def __init__(self, message, log_tail=""):
        super().__init__(message)
        self.log_tail = log_tail


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def config_text(config, path_keys=("state_dir", "data_dir", "app_dir", "tls_cert", "tls_key",
                                   "tls_ca")):
    """The config file's text; JSON is YAML, so no YAML library is needed on the target. A
    leading ~ in path-valued keys is the target user's home, known only here (fl_service opens
    them as written)."""
    config = dict(config)
    for key in path_keys:
        if isinstance(config.get(key), str):
            config[key] = os.path.expanduser(config[key])
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def _write(path, text):
    """Write atomically so a reload never reads half a file; readable by the service's user
    only; no temp file left behind when the write fails."""
    tmp = path + ".tmp"
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def running_pid(folder):
    """The pid from the pidfile if that process is alive and is this folder's service (its
    command line names this folder's config), else None: a recycled pid is not ours."""
    text = _read(os.path.join(folder, PIDFILE))
    if not text or not text.strip().isdigit():
        return None
    pid = int(text)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as f:
            zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return None
    config = os.path.join(folder, CONFIG).encode()
    return pid if config in argv and not zombie else None


def log_tail(folder, lines=15):
    text = _read(os.path.join(folder, LOG)) or ""
    return "\n".join(text.splitlines()[-lines:])


def stop(folder, pid, timeout=STOP_TIMEOUT):
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while running_pid(folder) == pid:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
        time.sleep(0.1)


def start(folder, argv, env):
    """Start ``argv`` detached (own session, no controlling terminal, output to the log) so it
    outlives the Ansible connection, and record its pid."""
    environ = dict(os.environ, **env)
    with open(os.path.join(folder, LOG), "ab") as log:
        proc = subprocess.Popen(
            argv, cwd=folder, env=environ, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
        )
    _write(os.path.join(folder, PIDFILE), f"{proc.pid}\n")
    return proc


def service_digest(digest, credentials=None, revision=None):
    """The digest a service runs with, which a restart follows: the plan's (its config without
    its parent) and, when given, its ``credentials`` (any JSON-able holder of PEM texts) and the
    ``revision`` of the code it runs, so a new certificate or key, or new code under it, restarts
    the service while a new parent only reloads it. Without either it is the plan's as is (what
    services placed before either existed recorded)."""
    extra = {k: v for k, v in (("credentials", credentials), ("revision", revision)) if v}
    if not extra:
        return digest
    text = json.dumps({"digest": digest, **extra}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _write_files(files):
    """{path: text}: each written atomically, 0600, its folder made 0700 if missing."""
    for path, text in files.items():
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        _write(path, text)


class _HTTPSAs(http.client.HTTPSConnection):
    """HTTPS to an address whose certificate must name ``server_name`` (a service's name, a SAN
    of its certificate), whatever address is dialled (a wildcard bind is dialled on loopback)."""

    def __init__(self, host, port, server_name, **kwargs):
        super().__init__(host, port, **kwargs)
        self._server_name = server_name

    def connect(self):
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_name)


def tls_context(ca, cert, key):
    """A client context that trusts only the pipeline's CA and presents ``cert``."""
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    return context


def _status(url, tls=None, name=""):
    """(answered, /status document or None, what answered when it is not an fl_service
    /status): ``tls`` (an ssl context) reads an https ``url`` whose certificate names ``name``."""
    parts = urllib.parse.urlsplit(url)
    if tls is not None:
        conn = _HTTPSAs(parts.hostname, parts.port, name, context=tls, timeout=2)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
    try:
        conn.request("GET", parts.path or "/")
        response = conn.getresponse()
        body = response.read()
    except ssl.SSLError as e:
        # Something holds the port, but not a service of this pipeline under this name.
        return True, None, f"a peer that fails a TLS handshake as {name} ({e.reason or e})"
    except (OSError, http.client.HTTPException):
        return False, None, None
    finally:
        conn.close()
    if response.status != 200:
        return False, None, None
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return True, None, "something that is not an fl_service /status"
    return True, doc, None


def wait_ready(supervisor, proc, url, timeout, name, tls=None):
    """Poll ``url`` until the service answers as itself (its /status names ``name`` and the pid
    started); fail early if the process exits (e.g. a config error, a port already taken), with
    the last line of its log (``supervisor``'s). Anything else answering there is not taken for
    the service. ``tls`` (an ssl context with the service's own certificate) reads it over
    mutual TLS."""
    port = urllib.parse.urlsplit(url).port
    deadline = time.monotonic() + timeout
    other = None
    while True:
        if proc.poll() is not None:
            held = f"; port {port} answers as {other}" if other else ""
            raise ServiceError(
                f"exited with status {proc.returncode} before answering on port {port}{held}; "
                f"its {supervisor.log_name()} ends: {supervisor.log_error_line()}",
                supervisor.log_tail())
        answered, doc, seen = _status(url, tls, name)
        if answered:
            if doc is not None and doc.get("name") == name and doc.get("pid") == proc.pid:
                return doc
            other = seen or f"name {doc.get('name')!r}, pid {doc.get('pid')!r}"
        if time.monotonic() > deadline:
            held = (f"port {port} answers as {other}, not as {name} (pid {proc.pid})" if other
                    else f"nothing answers {url}")
            raise ServiceError(f"not ready after {timeout:.0f} s: {held}; its "
                               f"{supervisor.log_name()} ends: {supervisor.log_error_line()}",
                               supervisor.log_tail())
        time.sleep(0.25)


# -- systemd ------------------------------------------------------------------------------------

def systemd_missing():
    """Why this host's services cannot be systemd system units, or None when they can."""
    if not os.path.isdir("/run/systemd/system"):
        return "systemd does not run this host (no /run/systemd/system)"
    if os.geteuid() != 0:
        return "the services' user is not root (system units need root)"
    if not shutil.which("systemctl"):
        return "systemctl is not on PATH"
    return None


def resolve_supervisor(wanted):
    """``wanted`` (auto, systemd or none) as this host runs it: systemd or none."""
    missing = systemd_missing()
    if wanted == "auto":
        return "none" if missing else "systemd"
    if wanted == "systemd" and missing:
        raise ServiceError(f"supervisor systemd: {missing}")
    return wanted


def unit_name(folder):
    """The unit of the service in ``folder`` (``<state dir>/<pipeline>/<name>``):
    ``hfl-<pipeline>-<name>.service``, characters a unit name cannot hold as ``_``."""
    folder = folder.rstrip("/")
    pipeline, name = os.path.basename(os.path.dirname(folder)), os.path.basename(folder)
    return re.sub(r"[^A-Za-z0-9:_.\-]", "_", f"hfl-{pipeline}-{name}") + ".service"


def unit_path(folder):
    return os.path.join(UNIT_DIR, unit_name(folder))


def _unit_word(text):
    """One word of a unit's command line: quoted, with specifiers (%) and variables ($) kept
    literal."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text.replace("%", "%%").replace("$", "$$") + '"'


def unit_text(folder, argv, name):
    """The unit of the service ``name`` in ``folder`` running ``argv``."""
    literal = folder.replace("%", "%%")
    return "\n".join([
        f"# Written by hfl.orchestration (module fl_process) for {folder}: edits are replaced.",
        "[Unit]",
        f"Description=hfl.orchestration service {name} ({literal})",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=exec",
        f"WorkingDirectory={literal}",
        f"EnvironmentFile={literal}/{ENVIRONMENT}",
        "ExecStart=" + " ".join(_unit_word(a) for a in argv),
        # A parent switch re-reads the config (SIGHUP), as under the detached supervisor.
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=2",
        f"TimeoutStopSec={STOP_TIMEOUT}",
        "UMask=0077",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def environment_text(env):
    """The EnvironmentFile's text: one KEY="value" per line."""
    def quoted(value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "".join(f"{k}={quoted(v)}\n" for k, v in sorted(env.items()))


def _systemctl(*args, check=True):
    done = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise ServiceError(f"systemctl {' '.join(args)} failed: "
                           f"{reason[-1] if reason else f'status {done.returncode}'}")
    return done.stdout


def unit_state(unit):
    """{MainPID, ActiveState, ExecMainStatus, ...} of ``unit`` as systemctl shows it."""
    out = _systemctl("show", "-p", "MainPID", "-p", "ActiveState", "-p", "ExecMainStatus",
                     "-p", "LoadState", unit, check=False)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def unit_pid(folder):
    """The MainPID of the service's unit while it is up (active or reloading), else None."""
    if not os.path.exists(unit_path(folder)):
        return None
    state = unit_state(unit_name(folder))
    pid = int(state.get("MainPID") or 0)
    return pid if pid and state.get("ActiveState") in ("active", "reloading") else None


class UnitProcess:
    """The process a unit started, as wait_ready polls a Popen: ``pid``, ``poll()`` (None while
    it is the unit's main process) and ``returncode``."""

    def __init__(self, unit):
        self.unit = unit
        self.pid = int(unit_state(unit).get("MainPID") or 0)
        self.returncode = None

    def poll(self):
        state = unit_state(self.unit)
        if self.pid and int(state.get("MainPID") or 0) == self.pid:
            return None
        self.returncode = int(state.get("ExecMainStatus") or 0)
        return self.returncode


def journal_tail(unit, lines=15):
    done = subprocess.run(["journalctl", "-u", unit, "-n", str(lines), "-o", "cat",
                           "--no-pager"], capture_output=True, text=True, check=False)
    return done.stdout.rstrip("\n")


def start_unit(folder, argv, env, name):
    """Write the unit and its environment, enable it (started at boot) and (re)start it."""
    path = unit_path(folder)
    _write(os.path.join(folder, ENVIRONMENT), environment_text(env))
    text = unit_text(folder, argv, name)
    if _read(path) != text:
        _write(path, text)
        os.chmod(path, 0o644)
        _systemctl("daemon-reload")
    unit = unit_name(folder)
    _systemctl("enable", unit)
    _systemctl("restart", unit)
    return UnitProcess(unit)


def remove_unit(folder):
    """Stop, disable and delete the service's unit; whether there was one."""
    path = unit_path(folder)
    if not os.path.exists(path):
        return False
    unit = unit_name(folder)
    _systemctl("disable", "--now", unit)
    os.remove(path)
    _systemctl("daemon-reload")
    _systemctl("reset-failed", unit, check=False)  # forget a failed state, if any
    return True


class Supervisor:
    """How the service in ``folder`` runs: its pid, its log, start, stop, reload."""

    def __init__(self, folder, kind, name=""):
        self.folder, self.kind, self.name = folder, kind, name

    @property
    def systemd(self):
        return self.kind == "systemd"

    def pid(self):
        return unit_pid(self.folder) if self.systemd else running_pid(self.folder)

    def other_pid(self):
        """The process of the other supervisor (one switched from), or None."""
        if self.systemd:
            return running_pid(self.folder)
        return unit_pid(self.folder) if os.path.exists(unit_path(self.folder)) else None

    def log_name(self):
        if self.systemd:
            return f"journal (journalctl -u {unit_name(self.folder)})"
        return f"log {os.path.join(self.folder, LOG)}"

    def log_tail(self):
        return journal_tail(unit_name(self.folder)) if self.systemd else log_tail(self.folder)

    def log_error_line(self):
        """The log's last non-empty line: what a service that exited said last (fl_service's
        own error, or a traceback's exception line)."""
        lines = [line.strip() for line in self.log_tail().splitlines() if line.strip()]
        return lines[-1] if lines else "(its log is empty)"

    def unit_current(self, argv):
        """Whether the unit file is the one ``argv`` needs (always, under none)."""
        return not self.systemd or _read(unit_path(self.folder)) == unit_text(
            self.folder, argv, self.name)

    def start(self, argv, env):
        return start_unit(self.folder, argv, env, self.name) if self.systemd else start(
            self.folder, argv, env)

    def reload(self, pid):
        if self.systemd:
            _systemctl("reload", unit_name(self.folder))
        else:
            os.kill(pid, signal.SIGHUP)

    def stop_started(self, proc):
        """Stop what a failed start left running."""
        if self.systemd:
            _systemctl("stop", unit_name(self.folder), check=False)
        elif proc.poll() is None:
            stop(self.folder, proc.pid)


def plan_present(folder, config_text, digest, supervisor=None, argv=None):
    """What ensure_running would do: 'unchanged', 'reload', 'start' or 'restart' (also when
    the service runs under the other supervisor, or its unit is not the one ``argv`` needs)."""
    supervisor = supervisor or Supervisor(folder, "none")
    if supervisor.pid() is None:
        return "start" if supervisor.other_pid() is None else "restart"
    if _read(os.path.join(folder, DIGEST)) != digest or not supervisor.unit_current(argv):
        return "restart"
    if _read(os.path.join(folder, CONFIG)) != config_text:
        return "reload"
    return "unchanged"


def ensure_running(folder, config_text, digest, argv, env, ready_url, timeout, check=False, *,
                   name, files=None, tls=None, supervisor="none"):
    """Bring the service in ``folder`` to ``config_text``; returns (action, pid). ``files``
    ({path: text}, e.g. its credentials) are written before a start. A start waits until
    ``ready_url`` answers as the service ``name`` (its config's name), with the pid started;
    ``tls`` (paths of the CA, certificate and key, which may be among ``files``) reads it over
    mutual TLS. ``supervisor`` (systemd or none, see resolve_supervisor) runs it."""
    sup = Supervisor(folder, supervisor, name)
    action = plan_present(folder, config_text, digest, sup, argv)
    pid = sup.pid()
    if check or action == "unchanged":
        return action, pid
    # The service's folder (config, pidfile, log, state) is its user's alone.
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    if action == "reload":
        _write(os.path.join(folder, CONFIG), config_text)
        sup.reload(pid)
        return action, pid
    # A unit's restart stops its process itself; what runs otherwise stops here.
    detached = running_pid(folder)
    if detached is not None:
        stop(folder, detached)
    if not sup.systemd:
        remove_unit(folder)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, PIDFILE))
    _write(os.path.join(folder, CONFIG), config_text)
    _write_files(files or {})
    context = tls_context(*tls) if tls else None
    # The digest is recorded only once the process answers, so a failed start is retried.
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, DIGEST))
    proc = sup.start(argv, env)
    if ready_url:
        try:
            wait_ready(sup, proc, ready_url, timeout, name, context)
        except ServiceError:
            sup.stop_started(proc)
            raise
    _write(os.path.join(folder, DIGEST), digest)
    return action, proc.pid


def ensure_absent(folder, check=False):
    """Stop the service (and remove its unit) and remove its folder; returns (changed, pid it
    stopped or None)."""
    pid = running_pid(folder) or unit_pid(folder)
    exists = os.path.isdir(folder) or os.path.exists(unit_path(folder))
    if check or not exists:
        return exists, pid
    remove_unit(folder)
    detached = running_pid(folder)
    if detached is not None:
        stop(folder, detached)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    parent = os.path.dirname(folder.rstrip("/"))
    # The pipeline folder holds only service folders: drop it with its last service.
    with contextlib.suppress(OSError):
        os.rmdir(parent)
    return True, pid
