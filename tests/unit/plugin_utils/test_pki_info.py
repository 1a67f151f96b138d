"""plugin_utils.pki (module fl_pki_info): which of a pipeline's credentials role fl_pki must
make. Nothing when everything on disk is what the plan asks for; otherwise exactly the subjects
that differ, each with a one-line reason."""

import datetime

import pytest
from ansible_collections.hfl.orchestration.plugins.plugin_utils import pki
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pki_fixtures import issue, make_ca, pem, write_key, write_pki

SERVICES = {"ga": ("global_aggregator", "127.0.0.1"), "la1": ("local_aggregator", "127.0.0.1"),
            "c1": ("client", "127.0.0.1")}


def plan(runtime="process", address="127.0.0.1", pipeline="demo"):
    return {"pipeline": pipeline, "runtime": runtime,
            "services": [{"name": n, "role": role, "address": address}
                         for n, (role, _) in SERVICES.items()]}


@pytest.fixture
def made(tmp_path):
    """A complete, current pki folder for plan() and its CA (key, certificate)."""
    ca = make_ca()
    return write_pki(tmp_path / "pki", SERVICES, ca=ca), ca


def todo(report):
    return {s["name"]: s["reason"] for s in report["subjects"] if s["reason"]}


def test_a_current_folder_needs_nothing(made):
    folder, _ = made
    report = pki.check(str(folder), plan(), "hfl-controller")
    assert report["dirs"] == [] and report["ca"] is None and todo(report) == {}
    assert report["ca_name"] == "hfl-demo CA"


def test_an_empty_folder_needs_everything(tmp_path):
    folder = tmp_path / "pki"
    report = pki.check(str(folder), plan(), "hfl-controller")
    assert report["dirs"] == [str(folder), str(folder / "services")]
    assert report["ca"] == "ca.key: no readable key"
    assert set(todo(report)) == {"ga", "la1", "c1", "hfl-controller"}


def test_subjects_are_named_by_role_and_address():
    subjects = {s.name: s for s in pki.subjects(plan(), "ctl")}
    assert subjects["la1"].ou == "local_aggregator" and subjects["la1"].base == "services/la1"
    assert subjects["la1"].sans == ("DNS:la1", "IP:127.0.0.1")
    assert subjects["la1"].usages == ("serverAuth", "clientAuth")
    assert (subjects["ctl"].ou, subjects["ctl"].sans, subjects["ctl"].usages) == (
        "controller", ("DNS:ctl",), ("clientAuth",))
    pods = {s.name: s for s in pki.subjects(plan("k3s", "node-1"), "ctl")}
    assert pods["la1"].sans == ("DNS:la1", "DNS:node-1", "DNS:la1.hfl-demo",
                                "DNS:la1.hfl-demo.svc", "DNS:la1.hfl-demo.svc.cluster.local")


def replace_cert(folder, ca, name, signer=None, **change):
    """Sign ``name``'s certificate again with its own key, by ``signer`` (default the CA), with
    ``change`` to issue()'s arguments (cn, ou, sans, server, days)."""
    key_path = folder / "services" / f"{name}.key"
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    args = {"cn": name, "ou": SERVICES[name][0], "sans": [name, "127.0.0.1"], **change}
    _, cert = issue(*(signer or ca), key=key, **args)
    (folder / "services" / f"{name}.crt").write_bytes(pem(cert))


@pytest.mark.parametrize("change, reason", [
    ({"ou": None}, "la1.crt: its subject is not CN=la1, OU=local_aggregator"),
    ({"ou": "client"}, "la1.crt: its subject is not CN=la1, OU=local_aggregator"),
    ({"cn": "ga"}, "la1.crt: its subject is not CN=la1, OU=local_aggregator"),
    ({"sans": ["la1", "10.0.0.9"]}, "la1.crt: its names are not DNS:la1, IP:127.0.0.1"),
    ({"server": False}, "la1.crt: its uses are not serverAuth, clientAuth"),
    ({"signer": make_ca()}, "la1.crt: not signed by the pipeline's CA"),
])
def test_a_certificate_unlike_the_plan_is_made_again(made, change, reason):
    folder, ca = made
    replace_cert(folder, ca, "la1", **change)
    assert todo(pki.check(str(folder), plan(), "hfl-controller")) == {"la1": reason}


def test_an_expiring_certificate_is_renewed(made):
    folder, ca = made
    replace_cert(folder, ca, "c1", days=10)
    report = pki.check(str(folder), plan(), "hfl-controller")
    c1 = next(s for s in report["subjects"] if s["name"] == "c1")
    assert c1["reason"].startswith("c1.crt: it expires on ") and c1["renew"] is True
    assert todo(report).keys() == {"c1"}


def test_a_key_that_is_not_the_certificates_or_not_private(made):
    folder, _ = made
    write_key(folder / "services" / "ga.key", ec.generate_private_key(ec.SECP256R1()))
    (folder / "services" / "c1.key").chmod(0o644)
    assert todo(pki.check(str(folder), plan(), "hfl-controller")) == {
        "ga": "ga.crt: not the certificate of its key", "c1": "c1.key: its mode is not 0600"}


def test_a_changed_plan_or_controller_name_makes_what_it_changes(made):
    folder, _ = made
    report = pki.check(str(folder), plan(address="10.0.0.5"), "ops")
    assert set(todo(report)) == {"ga", "la1", "c1", "ops"}
    assert todo(report)["ops"] == "controller.crt: its subject is not CN=ops, OU=controller"


def test_a_ca_that_expires_or_is_not_the_pipelines_is_made_again(made):
    folder, _ = made
    now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3640)
    report = pki.check(str(folder), plan(), "hfl-controller", now=now)
    assert report["ca"].startswith("ca.crt: it expires on ") and report["ca_renew"]
    assert set(todo(report)) == {"ga", "la1", "c1", "hfl-controller"}
    report = pki.check(str(folder), plan(pipeline="other"), "hfl-controller")
    assert report["ca"] == "ca.crt: not the self-signed 'hfl-other CA'"
    assert not report["ca_renew"]


@pytest.mark.parametrize("flags, ca", [({"rotate": True}, None),
                                       ({"rotate_ca": True}, "rotation of the CA")])
def test_rotation_makes_everything_it_covers(made, flags, ca):
    folder, _ = made
    report = pki.check(str(folder), plan(), "hfl-controller", **flags)
    assert report["ca"] == ca
    assert set(todo(report).values()) == {"rotation"} and len(todo(report)) == 4


def test_the_ca_certificate_must_be_the_ca_keys(made):
    folder, _ = made
    (folder / "ca.crt").write_bytes(pem(make_ca()[1]))
    assert pki.check(str(folder), plan(), "hfl-controller")["ca"] == (
        "ca.crt: not the certificate of its key")


def test_a_pools_certificate_lists_its_virtual_clients():
    pools = plan()
    pools["services"][2]["virtual_clients"] = {"c1-0": {"parent": "la1"},
                                               "c1-1": {"parent": "la1"}}
    subjects = {s.name: s for s in pki.subjects(pools, "ctl")}
    assert subjects["c1"].sans == ("DNS:c1", "IP:127.0.0.1", "DNS:c1-0", "DNS:c1-1")
    assert subjects["la1"].sans == ("DNS:la1", "IP:127.0.0.1")
