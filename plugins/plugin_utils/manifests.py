# Copyright: hfl.orchestration developers
# Apache License 2.0
"""Kubernetes manifests for a plan: rendered once, consumed byte for byte by k3s and podman.

Pure Python (no Ansible imports). ``render(plan)`` returns one multi-document YAML string:

- a Namespace ``hfl-<pipeline>`` (several pipelines share one cluster without touching),
- per service a ConfigMap (its fl_service config), a Deployment of one pod pinned to its
  inventory host, and for aggregators a Service that children reach by DNS name,
- a PersistentVolumeClaim for the GA's state, so a GA pod restart resumes from its checkpoint.

The same input gives the same bytes (no timestamps, fixed key and document order), so a re-run
changes nothing and both executors can be shown to consume identical text. What podman cannot
consume (Services, re-playing a claim) its executor handles with ``podman_units``; the text is
never rendered differently per runtime.
"""

from __future__ import annotations

import hashlib
import json
import re

import yaml

DEFAULT_IMAGE = "localhost/hfl/fl-service:0.1.0"
DEFAULT_PYTHON = "python3"
CONFIG_DIR = "/etc/hfl"
CONFIG_FILE = f"{CONFIG_DIR}/config.yaml"
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
CONFIG_SHA = "hfl.io/config-sha256"
APP_SHA = "hfl.io/app-sha256"
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
    The pod binds all its interfaces, and keeps state and data in the folders its volumes mount.
    """
    config = dict(service["config"])
    parent = service.get("parent")
    if parent is not None:
        config["parent"] = f"{dns_name(parent)}:{services_by_name[parent]['port']}"
    config.update(bind_host="0.0.0.0", state_dir=STATE_DIR, data_dir=DATA_DIR)
    if config.get("app_dir"):
        config["app_dir"] = APP_DIR
    return config


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
    return {
        "app.kubernetes.io/name": "fl-service",
        INSTANCE: dns_name(service["name"]),
        "app.kubernetes.io/component": service["role"],
        "app.kubernetes.io/part-of": "hfl",
        **selector_labels(pipeline),
        ROLE: service["role"],
        TIER: service["tier"],
    }


def _meta(name, ns, labels):
    return {"name": name, "namespace": ns, "labels": labels}


def _resources(service):
    """Inventory ``hfl_resources`` {cpu, memory} as equal requests and limits (QoS Guaranteed:
    a pod is not evicted before best-effort work on a busy edge node)."""
    wanted = {k: str(v) for k, v in sorted(service.get("resources", {}).items())
              if k in ("cpu", "memory") and v not in (None, "")}
    return {"requests": wanted, "limits": dict(wanted)} if wanted else {}


def _probe(initial_delay, period, failures):
    return {
        "httpGet": {"path": "/status", "port": "http"},
        "initialDelaySeconds": initial_delay,
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _deployment(ns, service, labels, config_text, image, python, host_paths, app):
    name = dns_name(service["name"])
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "state", "mountPath": STATE_DIR},
        {"name": "data", "mountPath": DATA_DIR},
    ]
    if service["role"] == "global_aggregator":
        state = {"name": "state", "persistentVolumeClaim": {"claimName": f"{name}-state"}}
    else:
        state = {"name": "state", "emptyDir": {}}
    volumes = [{"name": "config", "configMap": {"name": f"{name}-config"}}, state,
               {"name": "data", "emptyDir": {}}]
    # Read-only host folders (e.g. a Python environment on the host) for images that are a
    # bare base; the fleet image needs none.
    for i, path in enumerate(host_paths):
        mounts.append({"name": f"host-{i}", "mountPath": path, "readOnly": True})
        volumes.append({"name": f"host-{i}", "hostPath": {"path": path, "type": "Directory"}})
    annotations = {CONFIG_SHA: hashlib.sha256(config_text.encode()).hexdigest()}
    if app:
        # The app's files are on the node (a ConfigMap holds neither folders nor 1 MiB);
        # its digest in the template rolls the pod when they change.
        mounts.append({"name": "app", "mountPath": APP_DIR, "readOnly": True})
        volumes.append({"name": "app", "hostPath": {"path": app["node_dir"],
                                                    "type": "Directory"}})
        annotations[APP_SHA] = app["digest"]
    container = {
        "name": "fl-service",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": [python, "-m", "fl_service", service["role"],
                    "--config", CONFIG_FILE],
        # hostPort: the plan's address:port (the inventory host's) reaches the service on every
        # runtime, so status, wait and the orchestrator need no runtime-specific address.
        "ports": [{"name": "http", "containerPort": service["port"], "hostPort": service["port"],
                   "protocol": "TCP"}],
        # Readiness gates the Service; liveness is lenient: a client busy training still
        # answers /status from its HTTP thread, and a restart costs a round.
        "readinessProbe": _probe(2, 5, 3),
        "livenessProbe": _probe(30, 20, 6),
        "resources": _resources(service),
        "volumeMounts": mounts,
    }
    if not container["resources"]:
        del container["resources"]
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
                    # A changed config rolls the pod (k3s); podman replays the changed unit.
                    "annotations": annotations,
                },
                "spec": {
                    # The pod's pause/infra process is PID 1, so fl_service gets SIGTERM's
                    # default action (exit) at once instead of the grace period's SIGKILL.
                    "shareProcessNamespace": True,
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


def _service_docs(ns, service, services_by_name, image, python, host_paths, pipeline, app):
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
                            app if service["config"].get("app_dir") else None))
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
    return docs


def render(plan, image=None, python=None, host_paths=None, app_host_dir=None):
    """Multi-document YAML for ``plan``; ``image``/``python`` pick the container image and its
    interpreter, ``host_paths`` lists host folders every pod mounts read-only, and a plan with
    a Flower app mounts ``app_node_dir(plan, app_host_dir)`` read-only at ``APP_DIR``."""
    # Plain JSON copies: values straight from Ansible are str subclasses YAML cannot dump.
    plan, image, python, host_paths, app_host_dir = json.loads(json.dumps(
        [plan, image, python, host_paths, app_host_dir]))
    app = None
    if plan.get("app"):
        app = {"node_dir": app_node_dir(plan, app_host_dir), "digest": plan["app"]["digest"]}
    pipeline = plan["pipeline"]
    ns = namespace(pipeline)
    services = sorted(plan["services"],
                      key=lambda s: (_ROLE_ORDER.index(s["role"]), s["name"]))
    by_name = {s["name"]: s for s in services}
    seen = {}
    for s in services:
        other = seen.setdefault(dns_name(s["name"]), s["name"])
        if other != s["name"]:
            raise ManifestError(f"services {other!r} and {s['name']!r} both become "
                                f"{dns_name(s['name'])!r} in Kubernetes")
    docs = [{"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": ns, "labels": selector_labels(pipeline)}}]
    for s in services:
        docs += _service_docs(ns, s, by_name, image or DEFAULT_IMAGE, python or DEFAULT_PYTHON,
                              list(host_paths or ()), pipeline, app)
    return "".join("---\n" + _dump(d) for d in docs)


def documents(text):
    """The documents of ``render``'s output as (exact text, parsed) pairs, in order."""
    # Documents start at a line that is exactly '---'; literal blocks are indented.
    parts = _DOC_START.split(text)
    if parts[0]:
        raise ManifestError("manifests must start with '---'")
    return [("---\n" + p, yaml.safe_load(p)) for p in parts[1:]]


def podman_units(text):
    """What the podman executor plays, one unit per service, cut from ``render``'s text.

    ``podman kube play`` (4.3) ignores Namespaces and Services, and fails when a claim's volume
    already exists. So each unit's ``kube`` is the service's documents except its claims, as
    the very bytes k3s applies; ``claims`` are the volumes the executor creates itself, and
    ``volumes`` every named volume the unit leaves behind (reset removes them). A Service
    becomes the pod's alias on the pipeline's network (``alias``).
    """
    units = {}
    for raw, doc in documents(text):
        if doc["kind"] == "Namespace":
            continue
        name = doc["metadata"]["labels"][INSTANCE]
        unit = units.setdefault(name, {"name": name, "alias": name, "kube": "", "claims": [],
                                       "volumes": []})
        if doc["kind"] == "PersistentVolumeClaim":
            unit["claims"].append(doc["metadata"]["name"])
            unit["volumes"].append(doc["metadata"]["name"])
            continue
        if doc["kind"] == "ConfigMap":
            # podman keeps a configMap volume under the ConfigMap's name.
            unit["volumes"].append(doc["metadata"]["name"])
        unit["kube"] += raw
    return [units[k] for k in sorted(units)]


def stale(objects, text):
    """The cluster ``objects`` (as k8s_info lists them) that ``render``'s ``text`` no longer has,
    as (apiVersion, kind, namespace, name) dicts: what the k3s executor prunes."""
    wanted = {(doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"])
              for doc in (pair[1] for pair in documents(text))}
    gone = []
    for obj in objects:
        meta = obj["metadata"]
        if (obj["kind"], meta.get("namespace"), meta["name"]) not in wanted:
            gone.append({"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                         "namespace": meta.get("namespace"), "name": meta["name"]})
    return sorted(gone, key=lambda o: (o["kind"], o["name"]))
