# Copyright: hfl.orchestration developers
# Apache License 2.0
"""Target-side management of one detached background service in its own folder.

The folder holds ``config.yaml`` (written by the caller), ``digest`` (what the running process
was started with), ``pid`` and ``service.log``. ``ensure_running`` decides between nothing,
a reload (SIGHUP: the config changed but not its digest) and a restart (the digest changed or
the process is gone); ``ensure_absent`` stops the process and removes the folder.
Standard library only: it runs on every target host, and importing it must not pull in
Ansible, whose import-time patches (sys.intern) break torch.compile in a process that also
trains (a pytest run of the whole suite).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

CONFIG, DIGEST, PIDFILE, LOG = "config.yaml", "digest", "pid", "service.log"


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


def log_error_line(folder):
    """The log's last non-empty line: what a service that exited said last (fl_service's own
    error, or a traceback's exception line)."""
    lines = [line.strip() for line in log_tail(folder).splitlines() if line.strip()]
    return lines[-1] if lines else "(its log is empty)"


def stop(folder, pid, timeout=20.0):
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


def _status(url):
    """(answered, /status document or None): whether anything answered 200 at ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status != 200:
                return False, None
            body = r.read()
    except (OSError, ValueError):
        return False, None
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return True, None
    return True, doc if isinstance(doc, dict) else None


def wait_ready(folder, proc, url, timeout, name):
    """Poll ``url`` until the service answers as itself (its /status names ``name`` and the pid
    started); fail early if the process exits (e.g. a config error, a port already taken), with
    its log's last line. Anything else answering there is not taken for the service."""
    port = urllib.parse.urlsplit(url).port
    deadline = time.monotonic() + timeout
    other = None
    while True:
        if proc.poll() is not None:
            held = f"; port {port} answers as {other}" if other else ""
            raise ServiceError(
                f"exited with status {proc.returncode} before answering on port {port}{held}; "
                f"its log {os.path.join(folder, LOG)} ends: {log_error_line(folder)}",
                log_tail(folder))
        answered, doc = _status(url)
        if answered:
            doc = doc or {}
            if doc.get("name") == name and doc.get("pid") == proc.pid:
                return doc
            other = (f"name {doc.get('name')!r}, pid {doc.get('pid')!r}" if doc
                     else "something that is not an fl_service /status")
        if time.monotonic() > deadline:
            held = (f"port {port} answers as {other}, not as {name} (pid {proc.pid})" if other
                    else f"nothing answers {url}")
            raise ServiceError(f"not ready after {timeout:.0f} s: {held}; its log "
                               f"{os.path.join(folder, LOG)} ends: {log_error_line(folder)}",
                               log_tail(folder))
        time.sleep(0.25)


def plan_present(folder, config_text, digest):
    """What ensure_running would do: 'unchanged', 'reload', 'start' or 'restart'."""
    pid = running_pid(folder)
    if pid is None:
        return "start"
    if _read(os.path.join(folder, DIGEST)) != digest:
        return "restart"
    if _read(os.path.join(folder, CONFIG)) != config_text:
        return "reload"
    return "unchanged"


def ensure_running(folder, config_text, digest, argv, env, ready_url, timeout, check=False, *,
                   name):
    """Bring the service in ``folder`` to ``config_text``; returns (action, pid). A start waits
    until ``ready_url`` answers as the service ``name`` (its config's name), with the pid
    started."""
    action = plan_present(folder, config_text, digest)
    pid = running_pid(folder)
    if check or action == "unchanged":
        return action, pid
    # The service's folder (config, pidfile, log, state) is its user's alone.
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    if action == "reload":
        _write(os.path.join(folder, CONFIG), config_text)
        os.kill(pid, signal.SIGHUP)
        return action, pid
    if pid is not None:
        stop(folder, pid)
    _write(os.path.join(folder, CONFIG), config_text)
    # The digest is recorded only once the process answers, so a failed start is retried.
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, DIGEST))
    proc = start(folder, argv, env)
    if ready_url:
        try:
            wait_ready(folder, proc, ready_url, timeout, name)
        except ServiceError:
            if proc.poll() is None:
                stop(folder, proc.pid)
            raise
    _write(os.path.join(folder, DIGEST), digest)
    return action, proc.pid


def ensure_absent(folder, check=False):
    """Stop the service and remove its folder; returns (changed, pid it stopped or None)."""
    pid = running_pid(folder)
    exists = os.path.isdir(folder)
    if check or not exists:
        return exists, pid
    if pid is not None:
        stop(folder, pid)
    shutil.rmtree(folder)
    parent = os.path.dirname(folder.rstrip("/"))
    # The pipeline folder holds only service folders: drop it with its last service.
    with contextlib.suppress(OSError):
        os.rmdir(parent)
    return True, pid
