# Copyright: hfl.orchestration developers
# Apache License 2.0
"""Kubernetes manifests for a plan: rendered once, consumed byte for byte by k3s and podman.

Pure Python (no Ansible imports). ``render(plan, tls=...)`` returns one multi-document YAML
string:

- a Namespace ``hfl-<pipeline>`` (several pipelines share one cluster without touching),
- per service a ConfigMap (its fl_service config), a Deployment of one pod pinned to its
  inventory host, and for aggregators a Service that children reach by DNS name,
- a PersistentVolumeClaim for the GA's state, so a GA pod restart resumes from its checkpoint,
- NetworkPolicies: no pod of the pipeline takes connections, except an aggregator from its
  children (and from the GA's host, where status reads run).

Every pod runs as the image's non-root user with no capabilities, no privilege escalation, the
runtime's seccomp profile and no service-account token. With mutual TLS (the plan's default) each
pod mounts a Secret ``<service>-tls`` at ``/etc/hfl/tls``; ``tls_secrets(plan, tls)`` renders
those Secrets apart, so key material never lands in the manifests' text (which is kept on disk
and shown in logs); the Deployment carries their digest instead, so a rotated certificate rolls
the pod.

The same input gives the same bytes (no timestamps, fixed key and document order), so a re-run
changes nothing and both executors can be shown to consume identical text. What podman cannot
consume (Services, re-playing a claim) its executor handles with ``podman_units``; the text is
never rendered differently per runtime.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re

import yaml
from ansible_collections.hfl.orchestration.plugins.plugin_utils.plan import TLS_FILES

DEFAULT_IMAGE = "localhost/hfl/fl-service:0.1.0"
DEFAULT_PYTHON = "python3"
# The ConfigMap and the TLS Secret mount side by side: a volume mounted inside another
# (read-only) volume needs a mount point the runtime cannot create there.
CONFIG_DIR = "/etc/hfl/config"
CONFIG_FILE = f"{CONFIG_DIR}/config.yaml"
TLS_DIR = "/etc/hfl/tls"
# The fleet image's user (Containerfile: USER 10001, /var/lib/hfl owned by it). Volumes the pod
# writes (state, data) get this group (fsGroup), and the TLS Secret's files are group-readable.
RUN_AS = 10001
TLS_FILE_MODE = 0o440
STATE_DIR = "/var/lib/hfl/state"
DATA_DIR = "/var/lib/hfl/data"
# The Flower app (hfl_flower_app) inside every pod, mounted read-only from the node's folder
# ``<app_host_dir>/<pipeline>`` that placement unpacks it into.
APP_DIR = "/opt/hfl/app"
DEFAULT_APP_HOST_DIR = "/var/lib/hfl/apps"
GA_STATE_SIZE = "1Gi"
MANAGER = "hfl.orchestration"
INSTANCE = "app.kubernetes.io/instance"
PIPELINE = "hfl.io/pipeline"
ROLE = "hfl.io/role"
TIER = "hfl.io/tier"
# A child's parent (its Service name): the parent's NetworkPolicy admits pods with this label.
PARENT = "hfl.io/parent"
CONFIG_SHA = "hfl.io/config-sha256"
APP_SHA = "hfl.io/app-sha256"
TLS_SHA = "hfl.io/tls-sha256"
# podman 4.4 decodes a Secret's base64 data into the mounted files; 4.3 (Debian 12) writes the
# base64 text itself (podman#16625), so the executor stores the decoded values there.
PODMAN_DECODES_SECRETS = (4, 4)
_ROLE_ORDER = ("global_aggregator", "local_aggregator", "client")
_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_DOC_START = re.compile(r"^---\n", re.MULTILINE)


class ManifestError(ValueError):
    """The plan cannot be expressed as Kubernetes objects (e.g. two names map to one)."""


def dns_name(name):
    """``name`` as a DNS-1123 label: Kubernetes object names and the podman network alias."""
    label = _NOT_DNS.sub("-", str(name).lower()).strip("-")[:63].rstrip("-")
    if not label:
        raise ManifestError(f"service {name!r}: no DNS label can be made from this name")
    return label


def namespace(pipeline):
    return f"hfl-{dns_name(pipeline)}"


def selector_labels(pipeline):
    """Labels on every object of one pipeline: the k3s executor prunes by this selector."""
    return {"app.kubernetes.io/managed-by": MANAGER, PIPELINE: pipeline}


def cluster_config(service, services_by_name):
    """The service's fl_service config as it runs in a pod.

    The plan's ``parent`` is ``address:port`` between inventory hosts; inside a cluster (and on
    the podman network) a child reaches its parent by the parent's Service name instead, which
    stays right when the pod moves or restarts with a new IP. The port is the parent's plan port.
    The pod binds all its interfaces, and keeps state and data in the folders its volumes mount;
    its certificate, key and CA are the files of its TLS Secret.
    """
    config = dict(service["config"])

    def in_cluster(parent):
        return f"{dns_name(parent)}:{services_by_name[parent]['port']}"

    if service.get("parent") is not None:
        config["parent"] = in_cluster(service["parent"])
    if service.get("virtual_clients"):  # a pool: each of its virtual clients' parents
        config["virtual_clients"] = [
            {**entry, "parent": in_cluster(service["virtual_clients"][entry["name"]]["parent"])}
            for entry in config["virtual_clients"]]
    config.update(bind_host="0.0.0.0", state_dir=STATE_DIR, data_dir=DATA_DIR)
    if config.get("app_dir"):
        config["app_dir"] = APP_DIR
    for key, file in TLS_FILES.items():
        if key in config:
            config[key] = f"{TLS_DIR}/{file}"
    return config


def uses_tls(service):
    """Whether the service's config turns mutual TLS on (the plan sets all three keys or none)."""
    return any(key in service["config"] for key in TLS_FILES)


def app_node_dir(plan, app_host_dir=None):
    """The folder on a node that holds the plan's Flower app for its pods (None: no app)."""
    if not plan.get("app"):
        return None
    return f"{(app_host_dir or DEFAULT_APP_HOST_DIR).rstrip('/')}/{plan['pipeline']}"


class _Dumper(yaml.SafeDumper):
    """Block style, multi-line strings as literal blocks, no anchors: readable, stable bytes
    that every consumer parses alike."""

    def ignore_aliases(self, data):
        return True


def _str(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(doc):
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def _labels(pipeline, service):
    labels = {
        "app.kubernetes.io/name": "fl-service",
        INSTANCE: dns_name(service["name"]),
        "app.kubernetes.io/component": service["role"],
        "app.kubernetes.io/part-of": "hfl",
        **selector_labels(pipeline),
        ROLE: service["role"],
        TIER: service["tier"],
    }
    if service.get("parent") is not None:
        labels[PARENT] = dns_name(service["parent"])
    return labels


def _meta(name, ns, labels):
    return {"name": name, "namespace": ns, "labels": labels}


def _resources(service):
    """Inventory ``hfl_resources`` {cpu, memory} as equal requests and limits (QoS Guaranteed:
    a pod is not evicted before best-effort work on a busy edge node)."""
    wanted = {k: str(v) for k, v in sorted(service.get("resources", {}).items())
              if k in ("cpu", "memory") and v not in (None, "")}
    return {"requests": wanted, "limits": dict(wanted)} if wanted else {}


def _probe(port, initial_delay, period, failures, scheme):
    # With TLS the kubelet connects without a certificate and does not verify the service's:
    # fl_service answers such a /status with a bare "alive" (docs/security.md).
    return {
        "httpGet": {"path": "/status", "port": port, "scheme": scheme},
        "initialDelaySeconds": initial_delay,
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _pod_volume(name, what):
    """The pod's name for its own ``what`` volume (a DNS label). podman names an emptyDir's
    volume after it, host-wide: ``state`` alone would be one volume shared by every pod."""
    volume = f"{name}-{what}"
    if len(volume) <= 63:
        return volume
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:63 - len(what) - 10].rstrip('-')}-{digest}-{what}"


def _pod_security():
    """Hardening that costs nothing (issue 9): the image's non-root user, which also owns the
    volumes the pod writes, the runtime's seccomp profile, and no service-account token."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _deployment(ns, service, labels, config_text, image, python, host_paths, app, tls_digest):
    """``tls_digest``: None without TLS, else the digest of the pod's TLS Secret ("" unknown)."""
    name = dns_name(service["name"])
    state, data = _pod_volume(name, "state"), _pod_volume(name, "data")
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": state, "mountPath": STATE_DIR},
        {"name": data, "mountPath": DATA_DIR},
    ]
    if service["role"] == "global_aggregator":
        state_volume = {"name": state, "persistentVolumeClaim": {"claimName": f"{name}-state"}}
    else:
        state_volume = {"name": state, "emptyDir": {}}
    volumes = [{"name": "config", "configMap": {"name": f"{name}-config"}}, state_volume,
               {"name": data, "emptyDir": {}}]
    annotations = {CONFIG_SHA: hashlib.sha256(config_text.encode()).hexdigest()}
    if tls_digest is not None:
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        # optional: false spelled out: podman 4.3 dereferences the unset field and crashes.
        volumes.append({"name": "tls", "secret": {"secretName": f"{name}-tls",
                                                  "defaultMode": TLS_FILE_MODE,
                                                  "optional": False}})
        if tls_digest:
            annotations[TLS_SHA] = tls_digest
    # Read-only host folders (e.g. a Python environment on the host) for images that are a
    # bare base; the fleet image needs none.
    for i, path in enumerate(host_paths):
        mounts.append({"name": f"host-{i}", "mountPath": path, "readOnly": True})
        volumes.append({"name": f"host-{i}", "hostPath": {"path": path, "type": "Directory"}})
    if app:
        # The app's files are on the node (a ConfigMap holds neither folders nor 1 MiB);
        # its digest in the template rolls the pod when they change.
        mounts.append({"name": "app", "mountPath": APP_DIR, "readOnly": True})
        volumes.append({"name": "app", "hostPath": {"path": app["node_dir"],
                                                    "type": "Directory"}})
        annotations[APP_SHA] = app["digest"]
    scheme = "HTTP" if tls_digest is None else "HTTPS"
    container = {
        "name": "fl-service",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": [python, "-m", "fl_service", service["role"],
                    "--config", CONFIG_FILE],
        # hostPort: the plan's address:port (the inventory host's) reaches an aggregator on
        # every runtime, for children elsewhere and for status reads and control. Clients
        # serve nobody and declare no port: podman before 5.0 publishes every containerPort
        # on the host, hostPort or not.
        "ports": [{"name": "http", "containerPort": service["port"],
                   "hostPort": service["port"], "protocol": "TCP"}],
        # Readiness gates the Service; liveness is lenient: a client busy training still
        # answers /status from its HTTP thread, and a restart costs a round.
        "readinessProbe": _probe(service["port"], 2, 5, 3, scheme),
        "livenessProbe": _probe(service["port"], 30, 20, 6, scheme),
        "resources": _resources(service),
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": mounts,
    }
    if not container["resources"]:
        del container["resources"]
    if service["role"] == "client":
        del container["ports"]
    selector = {INSTANCE: labels[INSTANCE], PIPELINE: labels[PIPELINE]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, ns, labels),
        "spec": {
            "replicas": 1,
            # One service is one Flower peer and the GA's claim is ReadWriteOnce: never two.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": labels,
                    # A changed config or certificate rolls the pod (k3s); podman replays the
                    # changed unit.
                    "annotations": annotations,
                },
                "spec": {
                    # The pod's pause/infra process is PID 1, so fl_service gets SIGTERM's
                    # default action (exit) at once instead of the grace period's SIGKILL.
                    "shareProcessNamespace": True,
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security(),
                    "nodeSelector": {"kubernetes.io/hostname": service["host"]},
                    # k3s_agent may taint nodes hfl.io/tier=<tier>:NoSchedule to keep other
                    # work off edge devices; our pods tolerate their own tier.
                    "tolerations": [{"key": TIER, "operator": "Equal", "value": service["tier"],
                                     "effect": "NoSchedule"}],
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def _service_docs(ns, service, services_by_name, image, python, host_paths, pipeline, app,
                  tls_digest):
    name = dns_name(service["name"])
    labels = _labels(pipeline, service)
    # Sorted keys: the same config gives the same bytes whatever order the plan's dict has
    # (plan.json on disk is written sorted, the live plan is not).
    config_text = yaml.safe_dump(cluster_config(service, services_by_name), sort_keys=True,
                                 default_flow_style=False)
    docs = [{
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(f"{name}-config", ns, labels),
        "data": {"config.yaml": config_text},
    }]
    if service["role"] == "global_aggregator":
        # No storageClassName: the cluster default (k3s: local-path) binds the volume on the
        # node the GA is pinned to, so the checkpoint survives a pod restart there.
        docs.append({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": _meta(f"{name}-state", ns, labels),
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": GA_STATE_SIZE}}},
        })
    docs.append(_deployment(ns, service, labels, config_text, image, python, host_paths,
                            app if service["config"].get("app_dir") else None, tls_digest))
    if service["role"] != "client":
        docs.append({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(name, ns, labels),
            "spec": {
                "selector": {INSTANCE: name, PIPELINE: pipeline},
                "ports": [{"name": "http", "port": service["port"], "targetPort": "http",
                           "protocol": "TCP"}],
            },
        })
        docs.append(_children_only(ns, service, labels, pipeline, services_by_name))
    return docs


def _children_only(ns, service, labels, pipeline, services_by_name):
    """The aggregator's NetworkPolicy: its port takes connections from its children's pods
    (label hfl.io/parent) and from the GA's host, where the status reads and /control run;
    kubelet probes come from the node, which NetworkPolicies always admit."""
    name = dns_name(service["name"])
    sources = [{"podSelector": {"matchLabels": {PIPELINE: pipeline, PARENT: name}}}]
    ga = next(s for s in services_by_name.values() if s["role"] == "global_aggregator")
    try:
        address = ipaddress.ip_address(ga["address"])
        sources.append({"ipBlock": {"cidr": f"{address}/{address.max_prefixlen}"}})
    except ValueError:
        pass  # a host name: NetworkPolicies take addresses only (docs/architecture.md)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(f"{name}-ingress", ns, labels),
        "spec": {
            "podSelector": {"matchLabels": {INSTANCE: name, PIPELINE: pipeline}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": sources,
                         "ports": [{"protocol": "TCP", "port": service["port"]}]}],
        },
    }


def _deny_ingress(ns, pipeline):
    """Every pod of the pipeline refuses connections unless a policy above admits them: clients
    take none, aggregators only their children's (podman enforces no NetworkPolicy)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny-ingress", "namespace": ns,
                     "labels": selector_labels(pipeline)},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


def _pem(text, what):
    if not isinstance(text, str) or "-----BEGIN " not in text:
        raise ManifestError(f"{what}: not a PEM text")
    return text if text.endswith("\n") else text + "\n"


def _secret_data(service, tls):
    """The Secret's data (file name -> base64 of its PEM) for ``service``; ``tls`` is
    {ca, certs: {name: PEM}, keys: {name: PEM}}, the contents of role fl_pki's files."""
    name = service["name"]
    if not tls:
        raise ManifestError(f"service {name!r}: its config turns TLS on but no credentials "
                            "were given (role fl_pki makes them; or set hfl_insecure: true)")
    files = {}
    for key, source in (("tls_ca", tls.get("ca")),
                        ("tls_cert", (tls.get("certs") or {}).get(name)),
                        ("tls_key", (tls.get("keys") or {}).get(name))):
        if source is None:
            raise ManifestError(f"service {name!r}: no {TLS_FILES[key]} was given for it "
                                "(role fl_pki makes one per service of the plan)")
        files[TLS_FILES[key]] = base64.b64encode(
            _pem(source, f"service {name!r}: {TLS_FILES[key]}").encode()).decode()
    return dict(sorted(files.items()))


def _tls_digest(data):
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def placed_services(plan):
    """The plan's services but the clients the orchestrator left out (the plan's
    ``left_out``): podman and k3s render and wait for these only."""
    left_out = set(plan.get("left_out") or ())
    return [s for s in plan["services"] if s["name"] not in left_out]


def _prepare(plan, *rest):
    """Plain JSON copies (values straight from Ansible are str subclasses YAML cannot dump),
    the placed services in rendering order, and the check that their Kubernetes names
    differ."""
    plan, *rest = json.loads(json.dumps([plan, *rest]))
    services = sorted(placed_services(plan),
                      key=lambda s: (_ROLE_ORDER.index(s["role"]), s["name"]))
    seen = {}
    for s in services:
        other = seen.setdefault(dns_name(s["name"]), s["name"])
        if other != s["name"]:
            raise ManifestError(f"services {other!r} and {s['name']!r} both become "
                                f"{dns_name(s['name'])!r} in Kubernetes")
    return plan, services, rest


def render(plan, image=None, python=None, host_paths=None, app_host_dir=None, tls=None,
           tls_digests=True):
    """Multi-document YAML for ``plan``; ``image``/``python`` pick the container image and its
    interpreter, ``host_paths`` lists host folders every pod mounts read-only, and a plan with
    a Flower app mounts ``app_node_dir(plan, app_host_dir)`` read-only at ``APP_DIR``.
    ``tls`` ({ca, certs, keys}: PEM texts) is needed when the services' configs turn TLS on;
    only its digest per service enters the text. ``tls_digests=False`` renders the Secrets'
    mounts without their digests and needs no ``tls``: for removing a pipeline, which needs
    only the objects' names."""
    plan, services, (image, python, host_paths, app_host_dir, tls) = _prepare(
        plan, image, python, host_paths, app_host_dir, tls)
    app = None
    if plan.get("app"):
        app = {"node_dir": app_node_dir(plan, app_host_dir), "digest": plan["app"]["digest"]}
    pipeline = plan["pipeline"]
    ns = namespace(pipeline)
    by_name = {s["name"]: s for s in services}
    docs = [{"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": ns, "labels": selector_labels(pipeline)}},
            _deny_ingress(ns, pipeline)]
    for s in services:
        digest = None
        if uses_tls(s):
            digest = _tls_digest(_secret_data(s, tls)) if tls_digests else ""
        docs += _service_docs(ns, s, by_name, image or DEFAULT_IMAGE, python or DEFAULT_PYTHON,
                              list(host_paths or ()), pipeline, app, digest)
    return "".join("---\n" + _dump(d) for d in docs)


def tls_secrets(plan, tls):
    """The Secret ``<service>-tls`` of every service whose config turns TLS on, as
    multi-document YAML (empty without any): its certificate, key and the pipeline's CA as
    ``service.crt``, ``service.key``, ``ca.crt``. Holds private keys: never log or keep it."""
    plan, services, (tls,) = _prepare(plan, tls)
    ns = namespace(plan["pipeline"])
    docs = []
    for s in services:
        if uses_tls(s):
            docs.append({"apiVersion": "v1", "kind": "Secret",
                         "metadata": _meta(f"{dns_name(s['name'])}-tls", ns,
                                           _labels(plan["pipeline"], s)),
                         "type": "Opaque", "data": _secret_data(s, tls)})
    return "".join("---\n" + _dump(d) for d in docs)


def documents(text):
    """The documents of ``render``'s output as (exact text, parsed) pairs, in order."""
    # Documents start at a line that is exactly '---'; literal blocks are indented.
    parts = _DOC_START.split(text)
    if parts[0]:
        raise ManifestError("manifests must start with '---'")
    return [("---\n" + p, yaml.safe_load(p)) for p in parts[1:]]


def _pod_spec(doc):
    return doc["spec"]["template"]["spec"]


def podman_units(text):
    """What the podman executor plays, one unit per service, cut from ``render``'s text.

    ``podman kube play`` (4.3) ignores Namespaces, Services and NetworkPolicies, and fails when
    a claim's volume already exists. So each unit's ``kube`` is the service's documents except
    its claims and policies, as the very bytes k3s applies; ``claims`` are the volumes the
    executor creates itself, ``secret`` the podman secret its pod mounts (None without TLS:
    the executor stores it before playing), and ``volumes`` every named volume the unit leaves
    behind (reset removes them). A Service becomes the pod's alias on the pipeline's network
    (``alias``).
    """
    units = {}
    for raw, doc in documents(text):
        if doc["kind"] in ("Namespace", "NetworkPolicy"):
            continue
        name = doc["metadata"]["labels"][INSTANCE]
        unit = units.setdefault(name, {"name": name, "alias": name, "kube": "", "claims": [],
                                       "secret": None, "volumes": []})
        if doc["kind"] == "PersistentVolumeClaim":
            unit["claims"].append(doc["metadata"]["name"])
            unit["volumes"].append(doc["metadata"]["name"])
            continue
        if doc["kind"] == "ConfigMap":
            # podman keeps a configMap volume under the ConfigMap's name.
            unit["volumes"].append(doc["metadata"]["name"])
        if doc["kind"] == "Deployment":
            for volume in _pod_spec(doc)["volumes"]:
                # podman names an emptyDir's volume after it and a secret's after the secret.
                if "emptyDir" in volume:
                    unit["volumes"].append(volume["name"])
                elif "secret" in volume:
                    unit["secret"] = volume["secret"]["secretName"]
                    unit["volumes"].append(unit["secret"])
        unit["kube"] += raw
    return [units[k] for k in sorted(units)]


def podman_secrets(text, podman_version):
    """{secret name: what to store as that podman secret} for ``tls_secrets``' text: the
    Secret document podman's kube play reads when a pod mounts it. podman before 4.4 mounts
    ``data`` values as they are written, so there they are the decoded PEM texts."""
    version = tuple(int(x) for x in re.findall(r"\d+", str(podman_version))[:2])
    secrets = {}
    for raw, doc in documents(text) if text else ():
        if version < PODMAN_DECODES_SECRETS:
            doc["data"] = {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}
            raw = "---\n" + _dump(doc)
        secrets[doc["metadata"]["name"]] = raw
    return secrets


def stale(objects, text):
    """The cluster ``objects`` (as k8s_info lists them) that ``render``'s ``text`` no longer has,
    as (apiVersion, kind, namespace, name) dicts: what the k3s executor prunes. A Secret stays
    while a Deployment of the text mounts it (``tls_secrets`` renders them apart)."""
    wanted = set()
    for _text, doc in documents(text):
        meta = doc["metadata"]
        wanted.add((doc["kind"], meta.get("namespace"), meta["name"]))
        if doc["kind"] == "Deployment":
            wanted |= {("Secret", meta["namespace"], v["secret"]["secretName"])
                       for v in _pod_spec(doc)["volumes"] if "secret" in v}
    gone = []
    for obj in objects:
        meta = obj["metadata"]
        if (obj["kind"], meta.get("namespace"), meta["name"]) not in wanted:
            gone.append({"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                         "namespace": meta.get("namespace"), "name": meta["name"]})
    return sorted(gone, key=lambda o: (o["kind"], o["name"]))


def clients_not_joined(plan, statuses):
    """The plan's clients (a pool's: its virtual clients) whose parent's /status (``statuses``:
    name -> document, as fl_status_info returns them) does not list them among its children, in
    plan order; none once the global aggregator reports ``finished`` (a parent forgets a child
    that missed a round, and after the last round no child comes back). On podman and k3s a
    client publishes no port, so its join is read at its parent."""
    ga = next(s["name"] for s in plan["services"] if s["role"] == "global_aggregator")
    if (statuses.get(ga) or {}).get("state") == "finished":
        return []
    joined = {name: set(doc.get("children") or ()) for name, doc in statuses.items()
              if doc.get("reachable")}
    out = []
    for s in placed_services(plan):
        if s["role"] != "client":
            continue
        # A pool's virtual clients join on their own, each to its parent.
        children = ({c: v["parent"] for c, v in s["virtual_clients"].items()}
                    if s.get("virtual_clients") else {s["name"]: s["parent"]})
        out += [c for c, parent in children.items() if c not in joined.get(parent, ())]
    return out
