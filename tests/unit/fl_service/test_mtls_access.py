"""Mutual TLS on the service port: who the caller is (its certificate's CN and OU) and what it may
do (fl_service/access.py), against a real ServiceHTTPServer and real TLS clients on loopback."""

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from test_http_limits import get
from throwaway_pki import ThrowawayCA

from fl_service.access import ALIVE, Access
from fl_service.config import ConfigError, load_config
from fl_service.http_server import Peer, Reply, ServiceHTTPServer, peer_identity, server_context
from fl_service.roles.service import Service
from fl_service.transport import LinkCounters, client_context

LA_CFG = {"name": "la0", "role": "local_aggregator", "controller_name": "hfl-controller",
          "tls_cert": "x", "tls_key": "x", "tls_ca": "x"}
CLIENT_C1, CLIENT_C2 = Peer("c1", "client"), Peer("c2", "client")
CONTROLLER = Peer("hfl-controller", "controller")


@pytest.mark.parametrize(("role", "peer", "name", "refused"), [
    ("local_aggregator", CLIENT_C1, "c1", None),
    ("local_aggregator", CLIENT_C1, "c2", "certificate 'c1' may not speak for 'c2'"),
    ("local_aggregator", Peer("la1", "local_aggregator"), "la1",
     "a local_aggregator's children are of role client"),
    ("local_aggregator", CONTROLLER, "hfl-controller", "of role 'controller'"),
    ("local_aggregator", None, "c1", "a client certificate is required"),
    ("global_aggregator", Peer("la1", "local_aggregator"), "la1", None),
    ("global_aggregator", CLIENT_C1, "c1", None),  # flat FL
    ("global_aggregator", Peer("ga", "global_aggregator"), "ga", "children are of role"),
    ("client", CLIENT_C2, "c2", "children are of role none"),
    # A pool speaks for the virtual clients its certificate lists, and for no one else.
    ("local_aggregator", Peer("c1", "client", frozenset({"c1-0", "c1-1"})), "c1-1", None),
    ("local_aggregator", Peer("c1", "client", frozenset({"c1-0"})), "c1-1",
     "certificate 'c1' may not speak for 'c1-1'"),
])
def test_only_a_child_role_speaking_for_its_own_name_is_a_child(role, peer, name, refused):
    reason = Access({**LA_CFG, "role": role}).child(peer, name)
    assert reason is None if refused is None else refused in reason


@pytest.mark.parametrize(("peer", "allowed"), [
    (CONTROLLER, True),
    (Peer("la0", "local_aggregator"), True),  # its own certificate
    (CLIENT_C1, False),
    (Peer("hfl-controller", "client"), False),  # the name alone is not the controller
    (Peer("evil", "controller"), False),
    (None, False),
])
def test_control_is_for_the_controller_and_the_service_itself(peer, allowed):
    reason = Access(LA_CFG).control(peer)
    assert (reason is None) == allowed
    if not allowed:
        assert reason.startswith("only the controller (hfl-controller) or la0 itself may")


def test_without_tls_nothing_is_checked():
    access = Access({**LA_CFG, "tls_cert": "", "tls_key": "", "tls_ca": ""})
    assert access.child(None, "anyone") is None and access.control(None) is None
    assert access.sees_status(None)


def test_the_peer_is_the_subject_cn_and_ou():
    subject = ((("organizationalUnitName", "client"),), (("commonName", "c1"),))
    assert peer_identity({"subject": subject}) == CLIENT_C1
    two_names = ((("commonName", "c1"),), (("commonName", "c2"),))
    assert peer_identity({"subject": two_names}) == Peer("", "")
    assert peer_identity(None) is None


def test_a_pools_certificate_names_its_virtual_clients_and_nothing_else():
    subject = ((("organizationalUnitName", "client"),), (("commonName", "c1"),))
    sans = (("DNS", "c1"), ("DNS", "c1-0"), ("DNS", "c1-12"), ("DNS", "c2-0"), ("DNS", "c1-x"),
            ("IP Address", "127.0.0.1"))
    peer = peer_identity({"subject": subject, "subjectAltName": sans})
    assert peer == Peer("c1", "client", frozenset({"c1-0", "c1-12"}))


# ------------------------------------------------------------ the port
def whoami(query: dict[str, str], body: bytes, peer: Peer | None) -> Reply:
    return Reply(200, json.dumps(peer and [peer.name, peer.role]).encode())


@pytest.fixture
def tls_port(ca: ThrowawayCA) -> Iterator[int]:
    """A mutual-TLS port whose routes answer with the caller's Peer as JSON."""
    files = ca.issue("la0", "local_aggregator")
    routes = {("GET", "/status"): whoami, ("GET", "/metrics"): whoami,
              ("POST", "/fl/join"): whoami}
    server = ServiceHTTPServer("127.0.0.1", 0, routes, LinkCounters(),
                               server_context(files["tls_cert"], files["tls_key"], files["tls_ca"]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def ask(port: int, context: ssl.SSLContext, request: bytes) -> tuple[str, bytes]:
    """(status line, body) of one request over TLS."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        return get(sock, request)


def anonymous(ca: ThrowawayCA) -> ssl.SSLContext:
    """A TLS client that trusts the pipeline's CA and shows no certificate (a k8s probe)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca.ca_path)
    return context


def identified(ca: ThrowawayCA, name: str, role: str) -> ssl.SSLContext:
    files = ca.issue(name, role)
    return client_context(files["tls_cert"], files["tls_key"], files["tls_ca"])


GET_STATUS = b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n"


def test_a_route_is_handed_the_callers_certificate_name_and_role(tls_port, ca):
    status, body = ask(tls_port, identified(ca, "c1", "client"), GET_STATUS)
    assert status == "HTTP/1.1 200 OK" and json.loads(body) == ["c1", "client"]
    _, body = ask(tls_port, identified(ca, "hfl-controller", "controller"),
                  b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert json.loads(body) == ["hfl-controller", "controller"]


def test_without_a_certificate_only_status_is_served_and_the_rest_is_401(tls_port, ca, caplog):
    status, body = ask(tls_port, anonymous(ca), GET_STATUS)
    assert status == "HTTP/1.1 200 OK" and json.loads(body) is None
    for request in (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"POST /fl/join HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{\"a\": 1}",
                    b"GET /no/such/path HTTP/1.1\r\nHost: x\r\n\r\n"):
        status, body = ask(tls_port, anonymous(ca), request)
        assert status == "HTTP/1.1 401 Unauthorized", request
        assert "a client certificate from the pipeline's CA is required" in json.loads(
            body)["error"]
    assert "refused /fl/join from 127.0.0.1: POST /fl/join: a client certificate" in caplog.text


def test_a_certificate_of_another_ca_fails_the_handshake(tls_port, ca, tmp_path, caplog):
    stranger = ThrowawayCA(tmp_path / "other").issue("c1", "client")
    context = client_context(stranger["tls_cert"], stranger["tls_key"], str(ca.ca_path))
    with pytest.raises((ssl.SSLError, ConnectionResetError)):  # an alert, or EOF (TLS 1.3)
        ask(tls_port, context, GET_STATUS)
    logged = "TLS handshake with 127.0.0.1 failed: [SSL: CERTIFICATE_VERIFY_FAILED]"
    deadline = time.monotonic() + 5  # the server logs after its alert has gone out
    while logged not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.02)
    assert logged in caplog.text


def test_tls_below_1_2_and_plain_http_are_refused(tls_port, ca):
    files = ca.issue("ga", "global_aggregator")
    for context in (server_context(files["tls_cert"], files["tls_key"], files["tls_ca"]),
                    client_context(files["tls_cert"], files["tls_key"], files["tls_ca"])):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as plain:
        plain.sendall(GET_STATUS)
        assert not plain.recv(4096).startswith(b"HTTP/1.1 200")


def test_a_child_checks_that_the_parents_certificate_names_the_address_it_dials(tls_port, ca):
    context = identified(ca, "c1", "client")
    with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw, \
            pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        context.wrap_socket(raw, server_hostname="la9.example")


# ------------------------------------------------------------ the service's routes
@pytest.fixture
def service(ca: ThrowawayCA, tmp_path: Path) -> Callable[..., Service]:
    def make(**extra) -> Service:
        path = tmp_path / "la0.yaml"
        path.write_text(yaml.safe_dump({"name": "la0", "port": 1, "parent": "127.0.0.1:2",
                                        "state_dir": str(tmp_path / "state"),
                                        **ca.issue("la0", "local_aggregator"), **extra}))
        return Service(load_config("local_aggregator", path, environ={}))

    return make


def test_status_without_a_certificate_says_only_that_the_service_is_alive(service):
    status = service().routes()[("GET", "/status")]
    assert json.loads(status({}, b"", None).body) == ALIVE == {"alive": True}
    full = json.loads(status({}, b"", CLIENT_C1).body)
    assert full["name"] == "la0" and "pid" in full and "histogram" in full


def test_control_by_anyone_but_the_controller_or_the_service_is_403(service, caplog):
    control = service().routes()[("POST", "/control")]
    reply = control({}, b'{"reload": true}', CLIENT_C1)
    assert reply.status == 403
    assert json.loads(reply.body)["error"] == (
        "only the controller (hfl-controller) or la0 itself may control la0, not certificate "
        "'c1' (client)")
    assert "refused POST /control from certificate 'c1': only the controller" in caplog.text
    # Let through to the service's own handling (a bare Service takes no control messages).
    for peer in (CONTROLLER, Peer("la0", "local_aggregator")):
        assert control({}, b'{"reload": true}', peer).status == 400


def test_a_controller_of_another_name_is_configured_with_controller_name(service):
    control = service(controller_name="ops").routes()[("POST", "/control")]
    assert control({}, b"{}", Peer("ops", "controller")).status == 400
    assert control({}, b"{}", CONTROLLER).status == 403


def test_unusable_tls_files_are_a_config_error_naming_the_key(ca, tmp_path):
    files = ca.issue("la0", "local_aggregator")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"^tls_ca: .*garbage.pem: no CA certificate"):
        server_context(files["tls_cert"], files["tls_key"], str(garbage))
    with pytest.raises(ConfigError, match=r"^tls_cert: .*garbage.pem with key"):
        client_context(str(garbage), files["tls_key"], files["tls_ca"])
    other = ca.issue("c1", "client")
    with pytest.raises(ConfigError, match=r"^tls_cert: "):  # a key of another certificate
        server_context(files["tls_cert"], other["tls_key"], files["tls_ca"])


def test_a_plain_http_service_says_so_in_one_warning_at_start(tmp_path, caplog):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = tmp_path / "ga.yaml"
    path.write_text(yaml.safe_dump({"name": "ga", "port": port,
                                    "state_dir": str(tmp_path / "state")}))
    plain = Service(load_config("global_aggregator", path, environ={}))
    plain.start_http()
    try:
        [warning] = [r for r in caplog.records if "TLS IS OFF" in r.getMessage()]
    finally:
        plain.server.shutdown()
        plain.server.server_close()
    assert warning.levelname == "WARNING" and "\n" not in warning.getMessage()
    assert "anyone who can reach it can join, send updates" in warning.getMessage()
