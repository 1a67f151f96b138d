"""manifests.render: schema-valid objects for the pinned k3s, one source of bytes for both
container executors, and the in-cluster addresses children use to reach their parents."""

import copy
import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.vars.manager import VariableManager
from ansible_collections.hfl.orchestration.plugins.plugin_utils import (
    flower_app,
    manifests,
    plan,
    topology,
)
from inventory_fixtures import PIPELINE_VARS, local_hfl, pem_credentials

ROOT = Path(__file__).resolve().parents[3]
TEAMS = ("team1", "team2", "team3", "team4")


def pinned_kubernetes():
    """The Kubernetes version of the k3s release the k3s_server role installs."""
    defaults = yaml.safe_load((ROOT / "roles/k3s_server/defaults/main.yml").read_text())
    major, minor = defaults["hfl_k3s_version"].lstrip("v").split("+")[0].split(".")[:2]
    return f"{major}.{minor}.0"


def load_inventory(path):
    """hostvars and groups as Ansible hands them to the fl_plan action plugin."""
    assert path.is_dir(), f"{path}: inventory missing"
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(path)])
    variables = VariableManager(loader=loader, inventory=inventory)
    hosts = {h.name: variables.get_vars(host=h) for h in inventory.get_hosts()}
    return hosts, inventory.get_groups_dict()


def tutorial():
    return load_inventory(ROOT / "inventories/tutorial")


def four_teams():
    """The tutorial inventory four times over, one pipeline per team, on one cluster."""
    hosts, groups = tutorial()
    members = set(groups["hfl_cluster"])
    all_hosts, all_groups = {}, {}
    for team in TEAMS:
        for name in members:
            vars_ = copy.deepcopy(dict(hosts[name]))
            vars_["hfl_pipeline"] = team
            # Each team has its own eight VMs.
            vars_["ansible_host"] = vars_["hfl_address"] = f"{team}-{name}.example"
            if vars_.get("hfl_parent"):
                vars_["hfl_parent"] = f"{team}-{vars_['hfl_parent']}"
            if isinstance(vars_.get("hfl_link_cost"), dict):
                vars_["hfl_link_cost"] = {f"{team}-{k}": v
                                          for k, v in vars_["hfl_link_cost"].items()}
            all_hosts[f"{team}-{name}"] = vars_
        for group, names in groups.items():
            all_groups.setdefault(group, []).extend(f"{team}-{n}" for n in names
                                                    if n in members)
    return all_hosts, all_groups


def plans_of(hosts, groups):
    names = sorted({hosts[h].get("hfl_pipeline", "hfl") for h in groups["hfl_cluster"]})
    return [plan.make_plan(topology.build(hosts, groups, pipeline=n)) for n in names]


def docs(text):
    return [doc for _, doc in manifests.documents(text)]


def render(p, **kwargs):
    """``manifests.render`` with credentials for every service (plans use TLS by default)."""
    return manifests.render(p, tls=pem_credentials(p), **kwargs)


def by_kind(objs, kind):
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


@pytest.mark.parametrize("inventory", [tutorial, four_teams])
def test_hfl_every_manifest_validates_against_pinned_k3s_schema(inventory):
    version = pinned_kubernetes()
    plans = plans_of(*inventory())
    seen = set()
    for p in plans:
        for obj in docs(render(p)) + docs(manifests.tls_secrets(p, pem_credentials(p))):
            kubernetes_validate.validate(obj, version, strict=True)
            key = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
            assert key not in seen, f"{key} rendered twice: pipelines would overwrite each other"
            seen.add(key)
    assert len(plans) == (4 if inventory is four_teams else 1)


def test_hfl_tutorial_objects_pin_each_service_to_its_host():
    (p,) = plans_of(*tutorial())
    objs = docs(render(p))
    ns = f"hfl-{p['pipeline']}"
    assert {o["metadata"].get("namespace", o["metadata"]["name"]) for o in objs} == {ns}
    deployments = by_kind(objs, "Deployment")
    assert len(deployments) == len(p["services"]) == 8
    for s in p["services"]:
        pod = deployments[manifests.dns_name(s["name"])]["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"kubernetes.io/hostname": s["host"]}
        (container,) = pod["containers"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/status", "port": s["port"],
                                                   "scheme": "HTTPS"}
        wanted = {k: str(v) for k, v in s["resources"].items()}
        assert container.get("resources", {}).get("limits", {}) == wanted
    aggregators = {manifests.dns_name(s["name"]) for s in p["services"] if s["role"] != "client"}
    assert set(by_kind(objs, "Service")) == aggregators and len(aggregators) == 3
    (ga,) = [s for s in p["services"] if s["role"] == "global_aggregator"]
    claim = f"{manifests.dns_name(ga['name'])}-state"
    assert set(by_kind(objs, "PersistentVolumeClaim")) == {claim}
    ga_volumes = deployments[manifests.dns_name(ga["name"])]["spec"]["template"]["spec"]["volumes"]
    assert {"name": claim, "persistentVolumeClaim": {"claimName": claim}} in ga_volumes


def test_hfl_children_reach_parents_by_service_name():
    (p,) = plans_of(*tutorial())
    objs = docs(render(p))
    services = by_kind(objs, "Service")
    plan_parent = {s["name"]: s["parent"] for s in p["services"]}
    for cm in by_kind(objs, "ConfigMap").values():
        config = yaml.safe_load(cm["data"]["config.yaml"])
        assert config["bind_host"] == "0.0.0.0"
        if plan_parent[config["name"]] is None:
            assert "parent" not in config
            continue
        host, port = config["parent"].rsplit(":", 1)
        assert host == manifests.dns_name(plan_parent[config["name"]])
        assert services[host]["spec"]["ports"][0]["port"] == int(port)
        assert services[host]["spec"]["selector"]["app.kubernetes.io/instance"] == host


def test_hfl_a_pools_virtual_clients_reach_their_parents_by_service_name():
    hosts, groups = local_hfl(c1={"hfl_virtual_clients": 3}, c3={"hfl_virtual_clients": 2})
    for vars_ in hosts.values():
        vars_["hfl_runtime"] = "k3s"
    p = plan.make_plan(topology.build(hosts, groups), {"c1-2": "la2"})
    objs = docs(render(p))
    configs = {c["name"]: c for c in (yaml.safe_load(cm["data"]["config.yaml"])
                                      for cm in by_kind(objs, "ConfigMap").values())}
    assert [(v["name"], v["parent"]) for v in configs["c1"]["virtual_clients"]] == [
        ("c1-0", "la1:8081"), ("c1-1", "la1:8081"), ("c1-2", "la2:8082")]
    assert "c1-0" not in configs  # one pod per pool
    joined = {"ga": {"reachable": True, "children": ["la1", "la2"]},
              "la1": {"reachable": True, "children": ["c1-0", "c2"]},
              "la2": {"reachable": True, "children": ["c1-2", "c3-0", "c3-1", "c4"]}}
    assert manifests.clients_not_joined(p, joined) == ["c1-1"]


def test_hfl_same_plan_same_bytes_whatever_the_runtime():
    p = plan.make_plan(topology.build(*local_hfl()))
    text = render(p)
    assert render(copy.deepcopy(p)) == text
    for runtime in ("k3s", "podman"):
        assert render(dict(p, runtime=runtime)) == text


def test_hfl_podman_units_are_the_rendered_bytes_per_service():
    p = plan.make_plan(topology.build(*local_hfl()))
    text = render(p)
    units = {u["name"]: u for u in manifests.podman_units(text)}
    assert set(units) == {s["name"] for s in p["services"]}
    played = [raw for u in units.values() for raw, _ in manifests.documents(u["kube"])]
    claims = [raw for raw, doc in manifests.documents(text)
              if doc["kind"] == "PersistentVolumeClaim"]
    skipped = [raw for raw, doc in manifests.documents(text)
               if doc["kind"] in ("Namespace", "NetworkPolicy")]
    # Every rendered document is played verbatim, or is a claim, the Namespace or a
    # NetworkPolicy, which podman does not consume.
    assert sorted(played + claims + skipped) == sorted(raw for raw, _ in
                                                       manifests.documents(text))
    assert units["ga"]["claims"] == ["ga-state"]
    assert set(units["ga"]["volumes"]) == {"ga-state", "ga-config", "ga-data", "ga-tls"}
    assert units["c1"]["claims"] == [] and units["c1"]["secret"] == "c1-tls"
    # podman names an emptyDir's volume after it: each pod's are its own.
    assert units["c1"]["volumes"] == ["c1-config", "c1-state", "c1-data", "c1-tls"]


def test_hfl_client_move_changes_only_that_clients_unit():
    topo = topology.build(*local_hfl())
    before = {u["name"]: u["kube"] for u in manifests.podman_units(
        render(plan.make_plan(topo)))}
    after = {u["name"]: u["kube"] for u in manifests.podman_units(
        render(plan.make_plan(topo, {"c1": "la2"})))}
    assert [n for n in before if before[n] != after[n]] == ["c1"]
    assert "parent: la2:8082" in after["c1"]


def test_hfl_host_paths_mount_read_only_in_every_pod():
    p = plan.make_plan(topology.build(*local_hfl()))
    objs = docs(render(p, image="localhost/base:1", python="/venv/bin/python",
                       host_paths=["/usr", "/venv"]))
    for d in by_kind(objs, "Deployment").values():
        pod = d["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == "localhost/base:1"
        assert container["command"][0] == "/venv/bin/python"
        assert {"name": "host-1", "mountPath": "/venv", "readOnly": True} in (
            container["volumeMounts"])
        assert {"name": "host-1", "hostPath": {"path": "/venv", "type": "Directory"}} in (
            pod["volumes"])


def test_hfl_names_that_collide_in_kubernetes_are_an_error():
    extra = {"hfl_role": "client", "hfl_parent": "la1", "ansible_connection": "local",
             **PIPELINE_VARS}
    hosts, groups = local_hfl(**{"C_1": dict(extra, hfl_port=8095),
                                 "c-1": dict(extra, hfl_port=8096)})
    groups["edge"] += ["C_1", "c-1"]
    groups["hfl_cluster"] += ["C_1", "c-1"]
    with pytest.raises(manifests.ManifestError, match="'C_1' and 'c-1'|'c-1' and 'C_1'"):
        manifests.render(plan.make_plan(topology.build(hosts, groups)))


def test_hfl_k3s_prunes_exactly_what_left_the_plan():
    hosts, groups = local_hfl()
    before_plan = plan.make_plan(topology.build(hosts, groups))
    before = render(before_plan)
    hosts.pop("c4")
    for members in groups.values():
        if "c4" in members:
            members.remove("c4")
    after = render(plan.make_plan(topology.build(hosts, groups)))
    # The cluster holds the Secrets too, applied apart from the manifests.
    in_cluster = docs(before) + docs(manifests.tls_secrets(before_plan,
                                                           pem_credentials(before_plan)))
    assert [(o["kind"], o["name"]) for o in manifests.stale(in_cluster, after)] == [
        ("ConfigMap", "c4-config"), ("Deployment", "c4"), ("Secret", "c4-tls")]
    assert manifests.stale(in_cluster, before) == []


def test_hfl_clients_the_orchestrator_left_out_are_not_rendered_and_are_pruned():
    hosts, groups = local_hfl()
    before_plan = plan.make_plan(topology.build(hosts, groups))
    before = render(before_plan)
    # The orchestrator's re-placement: c4 left out, kept in the plan's services under the GA.
    left = plan.make_plan(topology.build(hosts, groups), assignment={"c4": "ga"})
    left["left_out"] = ["c4"]
    after = render(left)
    assert sorted(u["name"] for u in manifests.podman_units(after)) == [
        "c1", "c2", "c3", "ga", "la1", "la2"]
    assert "c4" not in {d["metadata"]["name"] for d in docs(after)}
    assert "c4-tls" not in {d["metadata"]["name"] for d in docs(manifests.tls_secrets(
        left, pem_credentials(left)))}
    in_cluster = docs(before) + docs(manifests.tls_secrets(before_plan,
                                                           pem_credentials(before_plan)))
    assert [(o["kind"], o["name"]) for o in manifests.stale(in_cluster, after)] == [
        ("ConfigMap", "c4-config"), ("Deployment", "c4"), ("Secret", "c4-tls")]
    # Placement waits for the joins of the clients it placed only.
    statuses = {"ga": {"reachable": True, "children": ["la1", "la2"]},
                "la1": {"reachable": True, "children": ["c1", "c2"]},
                "la2": {"reachable": True, "children": ["c3"]}}
    assert manifests.clients_not_joined(left, statuses) == []
    assert manifests.clients_not_joined(before_plan, statuses) == ["c4"]


def test_hfl_bytes_do_not_depend_on_key_order():
    p = plan.make_plan(topology.build(*local_hfl()))
    reordered = json.loads(json.dumps(p, sort_keys=True))
    assert render(reordered) == render(p)


def app_plan(digest="ab" * 32):
    app = flower_app.App(dir="/home/me/quickstart-hfl", digest=digest, files=(),
                         clientapp="task.client_app:app")
    return plan.make_plan(topology.build(*local_hfl()), app=app)


def test_hfl_flower_app_is_a_read_only_host_folder_in_every_pod():
    p = app_plan()
    text = render(p, app_host_dir="/srv/apps/")
    assert manifests.app_node_dir(p, "/srv/apps/") == "/srv/apps/demo"
    assert manifests.app_node_dir(p) == "/var/lib/hfl/apps/demo"
    assert manifests.app_node_dir(plan.make_plan(topology.build(*local_hfl()))) is None
    version = pinned_kubernetes()
    objs = docs(text)
    for obj in objs:
        kubernetes_validate.validate(obj, version, strict=True)
    for d in by_kind(objs, "Deployment").values():
        pod = d["spec"]["template"]["spec"]
        assert {"name": "app", "hostPath": {"path": "/srv/apps/demo", "type": "Directory"}} in (
            pod["volumes"])
        assert {"name": "app", "mountPath": "/opt/hfl/app", "readOnly": True} in (
            pod["containers"][0]["volumeMounts"])
        assert d["spec"]["template"]["metadata"]["annotations"]["hfl.io/app-sha256"] == "ab" * 32
    for cm in by_kind(objs, "ConfigMap").values():
        assert yaml.safe_load(cm["data"]["config.yaml"])["app_dir"] == "/opt/hfl/app"


def test_hfl_changed_flower_app_replays_every_unit_same_app_none():
    def units(p):
        return {u["name"]: u["kube"] for u in manifests.podman_units(render(p))}

    before = units(app_plan())
    assert units(app_plan()) == before
    after = units(app_plan("cd" * 32))
    assert all(after[n] != before[n] for n in before)
