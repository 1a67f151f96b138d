"""playbooks/pki.yml (role fl_pki) on a small plan: a CA per pipeline and, signed by it, a key
and certificate per service and for the controller, under <hfl_state_dir>/<pipeline>/pki/.
Every certificate names its service (CN and SAN, with the address its children dial) and its
role (OU), and is good for both ends of a link; keys are 0600 in a 0700 folder and never appear
in Ansible's output; a second run changes nothing and runs no community.crypto module; rotation
issues new keys and certificates under the same CA; a service given another address gets a
certificate naming it, the others are left alone; and the credentials make a real mutual-TLS
handshake that another pipeline's certificate cannot."""

import json
import shutil
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hfl_helpers import PLAYBOOKS, local_inventory, playbook

pytestmark = pytest.mark.integration

SERVICES = ("ga", "la1", "c1")  # one of each role keeps the runs short
ROLES = ("global_aggregator", "local_aggregator", "client")
# What a run that makes or signs anything prints; a run with nothing to do runs none of them.
CRYPTO_TASKS = ("Create the CA's private key", "Create each one's private key",
                "Sign each one's certificate")


def small(pipeline, runtime="process"):
    def edit(tiers, cluster_vars):
        tiers["fog"] = {"la1": tiers["fog"]["la1"]}
        tiers["edge"] = {"c1": dict(tiers["edge"]["c1"], hfl_link_cost=1)}
        cluster_vars.update(hfl_pipeline=pipeline, hfl_runtime=runtime)
    return edit


class Pki:
    """The files of one pipeline's pki folder (a copy, so later runs cannot change them)."""

    def __init__(self, folder):
        self.dir = Path(folder)

    def cert(self, name):
        path = self.dir / ("controller.crt" if name == "controller" else f"services/{name}.crt")
        return x509.load_pem_x509_certificate(path.read_bytes())

    def key_path(self, name):
        return self.dir / ("controller.key" if name == "controller" else f"services/{name}.key")

    def cert_path(self, name):
        return self.dir / ("controller.crt" if name == "controller" else f"services/{name}.crt")

    @property
    def ca(self):
        return x509.load_pem_x509_certificate((self.dir / "ca.crt").read_bytes())


RECORD_FACTS = """
- name: Provision
  ansible.builtin.import_playbook: {pki_yml}

- name: Record hfl_pki
  hosts: hfl_cluster
  gather_facts: false
  tasks:
    - name: Write each host's hfl_pki to {dest}
      ansible.builtin.copy:
        content: "{{{{ dict(ansible_play_hosts | zip(ansible_play_hosts
                    | map('extract', hostvars, 'hfl_pki'))) | to_json }}}}"
        dest: {dest}
        mode: "0644"
      delegate_to: localhost
      run_once: true
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run 1, run 2 and a rotation of pipeline demo (process runtime), then pipeline other
    (k3s runtime: only planned and provisioned, nothing is placed)."""
    tmp = tmp_path_factory.mktemp("pki")
    inventory = local_inventory(tmp / "demo", small("demo"))
    pki = tmp / "demo" / "controller" / "demo" / "pki"
    # The first run also records the fact hfl_pki as each host of the play sees it.
    recording = tmp / "record_facts.yml"
    recording.write_text(RECORD_FACTS.format(pki_yml=PLAYBOOKS / "pki.yml",
                                             dest=tmp / "facts.json"))
    out = {"facts": tmp / "facts.json"}
    steps = (("first", ()), ("second", ()), ("rotated", ("-e", "hfl_pki_rotate=true")),
             ("moved", ()))
    for step, extra in steps:
        if step == "moved":  # c1 now answers at another address
            hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
            hosts["hfl_cluster"]["children"]["edge"]["hosts"]["c1"]["hfl_address"] = "127.0.0.2"
            (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
        run = playbook(recording if step == "first" else "pki.yml", inventory, "-v", *extra,
                       timeout=600)
        assert run.rc == 0, run.why()
        out[step] = run
        shutil.copytree(pki, tmp / step, symlinks=True)
        shutil.copystat(pki, tmp / step)
    other_inventory = local_inventory(tmp / "other", small("other", runtime="k3s"))
    run = playbook("pki.yml", other_inventory, timeout=600)
    assert run.rc == 0, run.why()
    out["other"] = Pki(tmp / "other" / "controller" / "other" / "pki")
    out["live"] = Pki(pki)
    out.update({f"{step}_pki": Pki(tmp / step) for step, _ in steps})
    return out


def verify_chain(cert, ca):
    """The certificate was signed by the CA's key and names it as issuer."""
    assert cert.issuer == ca.subject
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                           ec.ECDSA(cert.signature_hash_algorithm))


def sans(cert):
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), [str(ip) for ip in
                                                     ext.get_values_for_type(x509.IPAddress)]


def test_every_service_has_a_certificate_of_the_pipeline_ca_naming_it(runs):
    pki = runs["first_pki"]
    ca = pki.ca
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hfl-demo CA"
    for name, role in zip(SERVICES, ROLES, strict=True):
        cert = pki.cert(name)
        verify_chain(cert, ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == (
            role)
        dns, ips = sans(cert)
        assert dns[0] == name and ips == ["127.0.0.1"], (dns, ips)  # the plan's address
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    controller = pki.cert("controller")
    verify_chain(controller, ca)
    assert controller.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[
        0].value == "controller"
    assert sans(controller)[0] == ["hfl-controller"]
    assert list(controller.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]


def test_in_pods_children_reach_their_parent_by_its_service_name(runs):
    dns, _ = sans(runs["other"].cert("la1"))
    assert dns == ["la1", "la1.hfl-other", "la1.hfl-other.svc", "la1.hfl-other.svc.cluster.local"]


def test_every_host_of_the_play_gets_the_paths(runs):
    facts = json.loads(runs["facts"].read_text())
    assert set(facts) == set(SERVICES)
    pki = facts["ga"]
    assert all(seen == pki for seen in facts.values())
    live = runs["live"]
    assert Path(pki["dir"]) == live.dir and Path(pki["ca_cert"]) == live.dir / "ca.crt"
    assert pki["controller_name"] == "hfl-controller"
    assert (pki["controller_cert"], pki["controller_key"]) == (
        str(live.cert_path("controller")), str(live.key_path("controller")))
    assert pki["service_certs"] == {n: str(live.cert_path(n)) for n in SERVICES}
    assert pki["service_keys"] == {n: str(live.key_path(n)) for n in SERVICES}


def test_keys_are_private_and_never_logged(runs):
    pki = runs["live"]
    assert stat.S_IMODE(pki.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((pki.dir / "services").stat().st_mode) == 0o700
    keys = [pki.dir / "ca.key", *(pki.key_path(n) for n in (*SERVICES, "controller"))]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for step in ("first", "rotated"):  # runs that made keys
        output = runs[step].output
        assert "PRIVATE KEY" not in output
        for key in (runs[f"{step}_pki"].dir / k.relative_to(pki.dir) for k in keys):
            for line in key.read_text().splitlines()[1:-1]:
                assert line not in output, f"{key.name} appears in the output of run {step}"


def test_a_second_run_changes_nothing(runs):
    assert runs["second"].changed == 0, runs["second"].output[-3000:]
    for name in (*SERVICES, "controller"):
        assert runs["second_pki"].cert(name) == runs["first_pki"].cert(name)
    assert all(task in runs["first"].output for task in CRYPTO_TASKS)
    assert not any(task in runs["second"].output for task in CRYPTO_TASKS)


def test_a_new_address_signs_that_services_certificate_only(runs):
    before, after = runs["rotated_pki"], runs["moved_pki"]
    assert sans(after.cert("c1")) == (["c1"], ["127.0.0.2"])
    assert after.cert("c1").public_key() == before.cert("c1").public_key()  # same key
    verify_chain(after.cert("c1"), after.ca)
    for name in ("ga", "la1", "controller"):
        assert after.cert(name) == before.cert(name)


def test_rotation_issues_new_keys_and_certificates_under_the_same_ca(runs):
    before, after = runs["second_pki"], runs["rotated_pki"]
    assert after.ca == before.ca
    assert (after.dir / "ca.key").read_bytes() == (before.dir / "ca.key").read_bytes()
    for name in (*SERVICES, "controller"):
        old, new = before.cert(name), after.cert(name)
        assert new.serial_number != old.serial_number
        assert new.public_key() != old.public_key()
        verify_chain(new, after.ca)


def serve_once(pki, name, listener, outcome):
    """Accept one TLS connection as service ``name`` requiring a client certificate of the
    pipeline's CA; record the peer's CN, or the handshake's error."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.cert_path(name), pki.key_path(name))
    ctx.load_verify_locations(pki.dir / "ca.crt")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        conn, _ = listener.accept()
        conn.settimeout(30)
        with ctx.wrap_socket(conn, server_side=True) as tls:
            outcome["peer"] = dict(p[0] for p in tls.getpeercert()["subject"])["commonName"]
            tls.sendall(b"ok")
    except (ssl.SSLError, OSError) as e:
        outcome["error"] = e


def handshake(pki, client=None, server_hostname="ga"):
    """A client that trusts ``pki``'s CA connects to ``pki``'s GA at ``server_hostname``,
    presenting ``client``'s credentials (a (Pki, name) pair; None: no certificate). Returns what
    each end saw: the server's "peer" (CN) or "error", the client's "read" or "client_error"."""
    outcome = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)
        server = threading.Thread(target=serve_once, args=(pki, "ga", listener, outcome))
        server.start()
        ctx = ssl.create_default_context(cafile=str(pki.dir / "ca.crt"))
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        if client is not None:
            client_pki, name = client
            ctx.load_cert_chain(client_pki.cert_path(name), client_pki.key_path(name))
        try:
            with socket.create_connection(listener.getsockname(), timeout=30) as raw, \
                    ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                outcome["read"] = tls.recv(2)
        except (ssl.SSLError, OSError) as e:
            outcome["client_error"] = e
        server.join(60)
        assert not server.is_alive()
    return outcome


@pytest.mark.parametrize("server_hostname", ["127.0.0.1", "ga"])
def test_the_credentials_make_a_mutual_tls_link(runs, server_hostname):
    pki = runs["live"]
    for name, cn in (("c1", "c1"), ("controller", "hfl-controller")):
        outcome = handshake(pki, (pki, name), server_hostname)
        assert outcome.get("peer") == cn and outcome.get("read") == b"ok", outcome


@pytest.mark.parametrize("client", ["other pipeline", "none"])
def test_a_client_without_a_certificate_of_the_pipeline_is_refused(runs, client):
    credentials = (runs["other"], "c1") if client == "other pipeline" else None
    outcome = handshake(runs["live"], credentials)
    assert "peer" not in outcome and "read" not in outcome, outcome
    expected = "CERTIFICATE_VERIFY_FAILED" if credentials else "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert expected in str(outcome.get("error")), outcome


def test_key_files_hold_the_certificates_keys(runs):
    pki = runs["live"]
    for name in (*SERVICES, "controller"):
        key = serialization.load_pem_private_key(pki.key_path(name).read_bytes(), None)
        assert key.public_key() == pki.cert(name).public_key()
