"""manifests: what the pods of a pipeline may do and who may reach them (issue 9): mutual TLS
from a Secret per service, hardened pods, host ports for aggregators only, NetworkPolicies that
admit children to their parents only, and what the podman executor stores and waits for."""

import base64

import pytest
import yaml
from ansible_collections.hfl.orchestration.plugins.plugin_utils import manifests, plan, topology
from inventory_fixtures import local_hfl, pem_credentials


def demo_plan(**pipeline_vars):
    hosts, groups = local_hfl()
    for vars_ in hosts.values():
        vars_.update(pipeline_vars)
    return plan.make_plan(topology.build(hosts, groups))


def objects(text):
    return [doc for _, doc in manifests.documents(text)]


def deployments(text):
    return {d["metadata"]["name"]: d for d in objects(text) if d["kind"] == "Deployment"}


def pod_of(deployment):
    return deployment["spec"]["template"]["spec"]


def test_hfl_every_pod_runs_unprivileged_as_the_image_user():
    p = demo_plan()
    for name, d in deployments(manifests.render(p, tls=pem_credentials(p))).items():
        pod = pod_of(d)
        assert pod["securityContext"] == {
            "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"}}, name
        assert pod["automountServiceAccountToken"] is False, name
        (container,) = pod["containers"]
        assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"]}}, name


def test_hfl_only_aggregators_publish_a_host_port():
    p = demo_plan()
    plan_ports = {s["name"]: (s["role"], s["port"]) for s in p["services"]}
    for name, d in deployments(manifests.render(p, tls=pem_credentials(p))).items():
        container = pod_of(d)["containers"][0]
        role, port = plan_ports[name]
        if role == "client":
            # Not even a containerPort: podman before 5.0 publishes every one on the host.
            assert "ports" not in container, name
        else:
            assert container["ports"] == [{"name": "http", "containerPort": port,
                                           "hostPort": port, "protocol": "TCP"}], name


def test_hfl_each_pod_mounts_its_own_credentials_and_the_text_holds_no_key():
    p = demo_plan()
    creds = pem_credentials(p)
    text = manifests.render(p, tls=creds)
    for cm in (o for o in objects(text) if o["kind"] == "ConfigMap"):
        config = yaml.safe_load(cm["data"]["config.yaml"])
        assert (config["tls_cert"], config["tls_key"], config["tls_ca"]) == (
            "/etc/hfl/tls/service.crt", "/etc/hfl/tls/service.key", "/etc/hfl/tls/ca.crt")
    for name, d in deployments(text).items():
        pod = pod_of(d)
        (container,) = pod["containers"]
        assert {"name": "tls", "mountPath": "/etc/hfl/tls", "readOnly": True} in (
            container["volumeMounts"])
        assert {"name": "tls", "secret": {"secretName": f"{name}-tls", "defaultMode": 0o440,
                                          "optional": False}} in pod["volumes"]
        # The kubelet probes without a certificate; fl_service answers it with a bare "alive".
        assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    for key in creds["keys"].values():
        body = key.splitlines()[1]
        assert body not in text and base64.b64encode(key.encode()).decode() not in text

    secrets = {o["metadata"]["name"]: o for o in objects(manifests.tls_secrets(p, creds))}
    assert set(secrets) == {f"{s['name']}-tls" for s in p["services"]}
    for s in p["services"]:
        secret = secrets[f"{s['name']}-tls"]
        assert secret["metadata"]["namespace"] == "hfl-demo"
        files = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert files == {"service.crt": creds["certs"][s["name"]],
                         "service.key": creds["keys"][s["name"]], "ca.crt": creds["ca"]}


def test_hfl_a_rotated_certificate_rolls_every_pod_and_nothing_else_does():
    p = demo_plan()
    first = manifests.render(p, tls=pem_credentials(p, tag="1"))
    assert manifests.render(p, tls=pem_credentials(p, tag="1")) == first
    rotated = manifests.render(p, tls=pem_credentials(p, tag="2"))

    def digests(text):
        return {n: d["spec"]["template"]["metadata"]["annotations"]["hfl.io/tls-sha256"]
                for n, d in deployments(text).items()}

    before, after = digests(first), digests(rotated)
    assert all(before[n] != after[n] for n in before)
    assert len(set(before.values())) == len(before)  # each pod its own Secret
    units = {u["name"]: u["kube"] for u in manifests.podman_units(first)}
    replayed = {u["name"]: u["kube"] for u in manifests.podman_units(rotated)}
    assert all(units[n] != replayed[n] for n in units)


def test_hfl_insecure_pipeline_renders_plain_http_and_needs_no_credentials():
    p = demo_plan(hfl_insecure=True)
    text = manifests.render(p)
    for name, d in deployments(text).items():
        pod = pod_of(d)
        assert all("secret" not in v for v in pod["volumes"]), name
        assert pod["containers"][0]["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
        # Hardening does not depend on TLS.
        assert pod["securityContext"]["runAsNonRoot"] is True
    assert "tls_cert" not in text
    assert manifests.tls_secrets(p, None) == ""
    assert all(u["secret"] is None for u in manifests.podman_units(text))


def test_hfl_missing_credentials_are_an_error_unless_only_names_are_wanted():
    p = demo_plan()
    with pytest.raises(manifests.ManifestError, match="service 'ga'.*no credentials"):
        manifests.render(p)
    creds = pem_credentials(p)
    del creds["keys"]["c3"]
    with pytest.raises(manifests.ManifestError, match="service 'c3': no service.key"):
        manifests.render(p, tls=creds)
    with pytest.raises(manifests.ManifestError, match="service 'c3': no service.key"):
        manifests.tls_secrets(p, creds)
    # Removing a pipeline needs its objects' names only: same units, no digests.
    names_only = manifests.render(p, tls_digests=False)
    assert "hfl.io/tls-sha256" not in names_only
    full = manifests.podman_units(manifests.render(p, tls=pem_credentials(p)))
    assert [(u["name"], u["secret"], u["volumes"]) for u in manifests.podman_units(names_only)] == [
        (u["name"], u["secret"], u["volumes"]) for u in full]


def test_hfl_network_policies_admit_children_to_their_parent_only():
    p = demo_plan()
    text = manifests.render(p, tls=pem_credentials(p))
    policies = {o["metadata"]["name"]: o["spec"] for o in objects(text)
                if o["kind"] == "NetworkPolicy"}
    assert set(policies) == {"deny-ingress", "ga-ingress", "la1-ingress", "la2-ingress"}
    assert policies["deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    labels = {n: d["spec"]["template"]["metadata"]["labels"] for n, d in deployments(text).items()}
    for s in p["services"]:
        if s["role"] == "client":
            continue
        spec = policies[f"{s['name']}-ingress"]
        selected = [n for n, lab in labels.items()
                    if all(lab.get(k) == v for k, v in spec["podSelector"]["matchLabels"].items())]
        assert selected == [s["name"]]
        (rule,) = spec["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": s["port"]}]
        pods, hosts = rule["from"]
        admitted = [n for n, lab in labels.items()
                    if all(lab.get(k) == v for k, v in pods["podSelector"]["matchLabels"].items())]
        assert sorted(admitted) == sorted(c["name"] for c in p["services"]
                                          if c["parent"] == s["name"])
        # The GA's host runs the status reads and /control through the host ports.
        assert hosts == {"ipBlock": {"cidr": "127.0.0.1/32"}}


def test_hfl_a_ga_known_by_host_name_gets_no_ip_block():
    hosts, groups = local_hfl(ga={"hfl_address": "cloud-1.example"})
    p = plan.make_plan(topology.build(hosts, groups))
    for o in objects(manifests.render(p, tls=pem_credentials(p))):
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] != "deny-ingress":
            assert [list(source) for source in o["spec"]["ingress"][0]["from"]] == [
                ["podSelector"]]


def test_hfl_podman_secrets_are_stored_as_this_podman_mounts_them():
    p = demo_plan()
    creds = pem_credentials(p)
    text = manifests.tls_secrets(p, creds)
    raw = {doc["metadata"]["name"]: part for part, doc in manifests.documents(text)}
    # podman 4.4 and later decode the data as Kubernetes does: the rendered document itself.
    for version in ("4.4.0", "5.2.1"):
        assert manifests.podman_secrets(text, version) == raw
    # podman 4.3 writes data values into the files as they are: store the PEM texts.
    old = manifests.podman_secrets(text, "4.3.1")
    assert set(old) == set(raw)
    data = yaml.safe_load(old["c2-tls"])["data"]
    assert data == {"ca.crt": creds["ca"], "service.crt": creds["certs"]["c2"],
                    "service.key": creds["keys"]["c2"]}
    assert manifests.podman_secrets("", "4.3.1") == {}


def test_hfl_clients_are_judged_joined_by_their_parents_view():
    p = demo_plan()
    statuses = {
        "ga": {"reachable": True, "state": "training", "children": ["la1", "la2"]},
        "la1": {"reachable": True, "children": ["c1", "c2"]},
        "la2": {"reachable": True, "children": ["c4"]},
    }
    assert manifests.clients_not_joined(p, statuses) == ["c3"]
    statuses["la1"] = {"reachable": False, "error": "refused"}
    assert manifests.clients_not_joined(p, statuses) == ["c1", "c2", "c3"]
    # After the last round a parent may have forgotten children: nothing is left to join.
    statuses["ga"]["state"] = "finished"
    assert manifests.clients_not_joined(p, statuses) == []


def test_hfl_long_service_names_still_get_their_own_volumes():
    long_a, long_b = "c" * 62 + "a", "c" * 62 + "b"
    extra = {"hfl_role": "client", "hfl_parent": "la1", "hfl_pipeline": "demo",
             "hfl_global_rounds": 3, "hfl_dataset": "digits", "ansible_connection": "local"}
    hosts, groups = local_hfl(**{long_a: dict(extra, hfl_port=8095),
                                 long_b: dict(extra, hfl_port=8096)})
    groups["edge"] += [long_a, long_b]
    groups["hfl_cluster"] += [long_a, long_b]
    p = plan.make_plan(topology.build(hosts, groups))
    units = {u["name"]: u for u in manifests.podman_units(
        manifests.render(p, tls=pem_credentials(p)))}
    own = {n: [v for v in units[n]["volumes"] if v.endswith(("-state", "-data"))]
           for n in (long_a, long_b)}
    assert all(len(v) <= 63 for vs in own.values() for v in vs)
    assert not set(own[long_a]) & set(own[long_b])
