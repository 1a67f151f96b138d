# Copyright: hfl.orchestration developers
# Apache License 2.0
"""Filters over plugin_utils.manifests: the one renderer, reachable from role tasks."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.hfl.orchestration.plugins.plugin_utils import manifests


def k8s_manifests(plan, image=None, python=None, host_paths=None, app_host_dir=None, tls=None,
                  tls_digests=True):
    """Multi-document YAML for ``plan`` (see manifests.render)."""
    try:
        return manifests.render(plan, image=image, python=python, host_paths=host_paths,
                                app_host_dir=app_host_dir, tls=tls, tls_digests=tls_digests)
    except manifests.ManifestError as err:
        raise AnsibleFilterError(str(err)) from err


def k8s_tls_secrets(plan, tls):
    """The services' TLS Secrets as multi-document YAML (see manifests.tls_secrets)."""
    try:
        return manifests.tls_secrets(plan, tls)
    except manifests.ManifestError as err:
        raise AnsibleFilterError(str(err)) from err


def podman_secrets(text, podman_version):
    """{secret name: content} for podman secrets (see manifests.podman_secrets)."""
    return manifests.podman_secrets(text, podman_version)


def clients_not_joined(plan, statuses):
    """Clients their parent's /status does not list (see manifests.clients_not_joined)."""
    return manifests.clients_not_joined(plan, statuses)


def podman_units(text):
    """Per-service podman units cut from the rendered text (see manifests.podman_units)."""
    return manifests.podman_units(text)


def k8s_stale(objects, text):
    """Cluster objects the rendered text no longer has (see manifests.stale)."""
    return manifests.stale(objects, text)


def app_node_dir(plan, app_host_dir=None):
    """The node folder the pods mount the plan's Flower app from (manifests.app_node_dir)."""
    return manifests.app_node_dir(plan, app_host_dir)


def k8s_name(name):
    """A service name as its Kubernetes object name and podman alias (manifests.dns_name)."""
    return manifests.dns_name(name)


class FilterModule:
    def filters(self):
        return {"k8s_manifests": k8s_manifests, "podman_units": podman_units,
                "k8s_stale": k8s_stale, "k8s_name": k8s_name, "app_node_dir": app_node_dir,
                "k8s_tls_secrets": k8s_tls_secrets, "podman_secrets": podman_secrets,
                "clients_not_joined": clients_not_joined}
