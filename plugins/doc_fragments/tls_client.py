# Copyright: hfl.orchestration developers
# Apache License 2.0
"""Options of a module that reads fl_service over mutual TLS; their argument spec is
plugins/module_utils/args_common.py's TLS_CLIENT_ARG_SPEC (keep the two in step)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  ca:
    description:
      - The pipeline's CA certificate (PEM) on the host the module runs on; an C(https) service
        must present a certificate it signed, naming the URL's host.
      - Without it, the system's trust store is used (which does not know a pipeline's CA).
    type: path
  client_cert:
    description:
      - A certificate of the pipeline (PEM) on the host the module runs on, presented to each
        service, with O(client_key). Without one a service answers C(/status) with no more than
        that it is alive.
      - On a service's host, that service's own certificate; on the controller, the
        controller's (role fl_pki).
    type: path
  client_key:
    description: The private key of O(client_cert) (PEM) on the host the module runs on.
    type: path
"""
