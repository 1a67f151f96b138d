"""Process management of fl_process against a tiny stand-in service (it only serves /status and
counts SIGHUPs); the real fl_service is exercised by the integration tests."""

import json
import os
import signal
import socket
import sys
import textwrap
import time
import urllib.parse
import urllib.request

import pytest
from ansible_collections.hfl.orchestration.plugins.module_utils import fl_process as svc
from pki_fixtures import write_pki

STAND_IN = textwrap.dedent("""
    import http.server, json, os, signal, ssl, sys
    cfg = json.load(open(sys.argv[1]))
    if cfg.get("fail"):
        print("config error: fail"); sys.exit(2)
    hups = []
    signal.signal(signal.SIGHUP, lambda *a: hups.append(1))
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"name": cfg["name"], "pid": os.getpid(),
                               "hups": len(hups)}).encode()
            self.send_response(200); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    srv = http.server.HTTPServer(("127.0.0.1", cfg["port"]), H)
    if cfg.get("tls_cert"):  # mutual TLS as fl_service's: a client certificate of the CA
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cfg["tls_cert"], cfg["tls_key"])
        ctx.load_verify_locations(cfg["tls_ca"])
        ctx.verify_mode = ssl.CERT_REQUIRED
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.serve_forever()
""")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def service(tmp_path):
    folder = str(tmp_path / "demo" / "svc")
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    own_port = free_port()
    url = f"http://127.0.0.1:{own_port}/status"
    argv = [sys.executable, str(script), os.path.join(folder, svc.CONFIG)]

    def ensure(config, digest, check=False, port=own_port, files=None, tls=None):
        text = json.dumps({"name": "svc", "port": port, **config})
        scheme = "https" if tls else "http"
        return svc.ensure_running(folder, text, digest, argv, {},
                                  f"{scheme}://127.0.0.1:{port}/status", 30, check=check,
                                  name="svc", files=files, tls=tls)

    yield folder, ensure, url
    pid = svc.running_pid(folder)
    if pid:
        svc.stop(folder, pid)


def status(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_start_is_idempotent_and_digest_change_restarts(service):
    folder, ensure, url = service
    assert ensure({}, "d1", check=True) == ("start", None)
    assert svc.running_pid(folder) is None  # check mode started nothing
    action, pid = ensure({}, "d1")
    assert action == "start" and status(url)["name"] == "svc"
    assert ensure({}, "d1") == ("unchanged", pid)
    action, pid2 = ensure({"epochs": 2}, "d2")
    assert action == "restart" and pid2 != pid
    assert svc.running_pid(folder) == pid2 and status(url)["name"] == "svc"


def test_the_service_folder_and_its_config_are_its_users_alone(service):
    folder, ensure, _ = service
    os.makedirs(folder, mode=0o755)  # left by an older version
    ensure({}, "d1")
    assert os.stat(folder).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(folder, svc.CONFIG)).st_mode & 0o777 == 0o600
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]


def test_config_change_with_same_digest_reloads_without_restart(service):
    folder, ensure, url = service
    _, pid = ensure({"parent": "a:1"}, "d1")
    assert ensure({"parent": "b:2"}, "d1") == ("reload", pid)
    deadline = time.monotonic() + 10
    while status(url)["hups"] < 1:
        assert time.monotonic() < deadline, "SIGHUP never arrived"
        time.sleep(0.05)
    with open(os.path.join(folder, svc.CONFIG)) as f:
        assert '"b:2"' in f.read()


def test_dead_process_is_started_again(service):
    folder, ensure, _ = service
    _, pid = ensure({}, "d1")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while svc.running_pid(folder) == pid:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    action, pid2 = ensure({}, "d1")
    assert action == "start" and pid2 != pid


def test_failed_start_reports_the_log_and_is_retried(service):
    folder, ensure, url = service
    with pytest.raises(svc.ServiceError) as failed:
        ensure({"fail": True}, "d1")
    log = os.path.join(folder, svc.LOG)
    port = urllib.parse.urlsplit(url).port
    assert str(failed.value) == (f"exited with status 2 before answering on port {port}; "
                                 f"its log {log} ends: config error: fail")
    assert failed.value.log_tail == "config error: fail"
    assert ensure({"fail": True}, "d1", check=True)[0] == "start"


def test_a_port_held_by_another_server_is_not_taken_for_the_service(service, serve):
    """The stand-in cannot bind a port another server holds and answers 200 on: the start
    fails naming the port, what answers there and the service's own error, never "started"."""
    folder, ensure, _ = service
    held = serve({"GET": (200, {"name": "svc", "pid": 1})})
    with pytest.raises(svc.ServiceError) as failed:
        ensure({}, "d1", port=held)
    message = str(failed.value)
    assert message.startswith(f"exited with status 1 before answering on port {held}; "
                              f"port {held} answers as name 'svc', pid 1; its log ")
    assert message.endswith("Address already in use") and "\n" not in message
    assert svc.running_pid(folder) is None


def test_absent_stops_and_removes_everything(service):
    folder, ensure, _ = service
    _, pid = ensure({}, "d1")
    assert svc.ensure_absent(folder, check=True) == (True, pid)
    assert svc.running_pid(folder) == pid
    assert svc.ensure_absent(folder) == (True, pid)
    assert not os.path.exists(os.path.dirname(folder))  # the emptied pipeline folder too
    assert svc.ensure_absent(folder) == (False, None)


def test_paths_in_the_config_start_at_the_target_users_home():
    config = {"state_dir": "~/s", "tls_cert": "~/tls/service.crt", "tls_key": "~/tls/service.key",
              "tls_ca": "~/tls/ca.crt", "name": "~x"}
    written = json.loads(svc.config_text(config))
    home = os.path.expanduser("~")
    assert written == {"state_dir": f"{home}/s", "tls_cert": f"{home}/tls/service.crt",
                       "tls_key": f"{home}/tls/service.key", "tls_ca": f"{home}/tls/ca.crt",
                       "name": "~x"}


@pytest.fixture
def credentials(tmp_path):
    """Two sets of the stand-in's credentials (PEM texts by config key) and where they go."""
    made = [write_pki(tmp_path / f"pki{i}", {"svc": ("client", "127.0.0.1")}) for i in (0, 1)]
    tls = tmp_path / "demo" / "svc" / "tls"
    paths = {"tls_cert": str(tls / "service.crt"), "tls_key": str(tls / "service.key"),
             "tls_ca": str(tls / "ca.crt")}
    texts = [{"tls_cert": (pki / "services/svc.crt").read_text(),
              "tls_key": (pki / "services/svc.key").read_text(),
              "tls_ca": (pki / "ca.crt").read_text()} for pki in made]
    return paths, texts


def test_a_tls_service_gets_its_credentials_and_is_checked_with_its_own_certificate(
        service, credentials):
    folder, ensure, _ = service
    paths, (first, second) = credentials
    tls = (paths["tls_ca"], paths["tls_cert"], paths["tls_key"])

    def place(texts):
        files = {paths[k]: texts[k] for k in paths}
        return ensure(paths, svc.service_digest("d1", texts), files=files, tls=tls)

    action, pid = place(first)
    assert action == "start"
    assert os.stat(os.path.dirname(paths["tls_key"])).st_mode & 0o777 == 0o700
    for key, path in paths.items():
        assert os.stat(path).st_mode & 0o777 == 0o600
        with open(path) as f:
            assert f.read() == first[key]
    assert place(first) == ("unchanged", pid)
    action, pid2 = place(second)  # rotated: a new key and certificate restart it
    assert action == "restart" and pid2 != pid
    with open(paths["tls_key"]) as f:
        assert f.read() == second["tls_key"]


def test_a_plain_server_on_a_tls_services_port_is_not_taken_for_it(service, serve, credentials):
    folder, ensure, _ = service
    paths, (texts, _) = credentials
    held = serve({"GET": (200, {"name": "svc", "pid": 1})})
    with pytest.raises(svc.ServiceError) as failed:
        ensure(paths, "d1", port=held, files={paths[k]: texts[k] for k in paths},
               tls=(paths["tls_ca"], paths["tls_cert"], paths["tls_key"]))
    assert str(failed.value).startswith(
        f"exited with status 1 before answering on port {held}; port {held} answers as a peer "
        f"that fails a TLS handshake as svc (")
    assert svc.running_pid(folder) is None


def test_the_service_digest_follows_the_credentials_and_the_code_revision():
    assert svc.service_digest("d1") == "d1"
    one = svc.service_digest("d1", {"tls_key": "a"})
    assert one != "d1" and one == svc.service_digest("d1", {"tls_key": "a"})
    assert one != svc.service_digest("d1", {"tls_key": "b"})
    code = svc.service_digest("d1", revision="r1")
    assert code not in ("d1", one) and code == svc.service_digest("d1", None, "r1")
    assert code != svc.service_digest("d1", revision="r2")
    assert svc.service_digest("d1", {"tls_key": "a"}, "r1") not in (one, code)


def test_new_code_restarts_the_service_and_a_new_parent_alone_still_reloads_it(service):
    """What a controller upgrade does: the same config under a new revision restarts; a parent
    switch under the same revision reloads; nothing new leaves it alone."""
    folder, ensure, url = service
    old, new = svc.service_digest("d1", revision="r1"), svc.service_digest("d1", revision="r2")
    action, pid = ensure({"parent": "la1"}, old)
    assert action == "start"
    assert ensure({"parent": "la1"}, old) == ("unchanged", pid)
    assert ensure({"parent": "la2"}, old) == ("reload", pid)
    assert ensure({"parent": "la2"}, new, check=True) == ("restart", pid)
    assert svc.running_pid(folder) == pid  # check mode restarted nothing
    action, upgraded = ensure({"parent": "la2"}, new)
    assert action == "restart" and upgraded != pid and status(url)["pid"] == upgraded
    assert ensure({"parent": "la2"}, new) == ("unchanged", upgraded)


def test_a_unit_is_named_after_the_pipeline_and_service_and_quotes_what_systemd_expands():
    folder = "/srv/my pipe/ga%1"
    assert svc.unit_name(folder + "/") == "hfl-my_pipe-ga_1.service"
    text = svc.unit_text(folder, ["/v/bin/python", "-m", "fl_service", 'a"b$HOME\\'], "ga")
    assert 'ExecStart="/v/bin/python" "-m" "fl_service" "a\\"b$$HOME\\\\"\n' in text
    assert "WorkingDirectory=/srv/my pipe/ga%%1\n" in text
    assert "EnvironmentFile=/srv/my pipe/ga%%1/environment\n" in text
    assert "Restart=on-failure\n" in text and "WantedBy=multi-user.target\n" in text
    assert svc.environment_text({"B": 'say "hi" \\o/', "A": "1"}) == (
        'A="1"\nB="say \\"hi\\" \\\\o/"\n')


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="systemd runs this host")
def test_auto_is_detached_where_systemd_does_not_run_and_systemd_says_why():
    assert svc.resolve_supervisor("auto") == "none"
    assert svc.resolve_supervisor("none") == "none"
    with pytest.raises(svc.ServiceError) as no:
        svc.resolve_supervisor("systemd")
    assert str(no.value) == ("supervisor systemd: systemd does not run this host "
                             "(no /run/systemd/system)")
