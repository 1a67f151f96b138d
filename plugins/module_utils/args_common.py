# Copyright: hfl.orchestration developers
# Apache License 2.0
"""Argument specs that several modules and action plugins share, each documented once by the
doc fragment named beside it (the style of kubernetes.core's args_common: one spec, one
fragment). A module merges them into its own spec: ``dict(own_options, **TLS_CLIENT_ARG_SPEC)``.
"""

from __future__ import annotations

# Doc fragment hfl.orchestration.tls_client: reading fl_service over mutual TLS.
TLS_CLIENT_ARG_SPEC = dict(
    ca=dict(type="path"),
    client_cert=dict(type="path"),
    # A path, not a secret: the key itself never passes through the module's arguments.
    client_key=dict(type="path", no_log=False),
)
TLS_CLIENT_REQUIRED_TOGETHER = [("client_cert", "client_key")]

# Doc fragment hfl.orchestration.pipeline: which pipeline of the inventory.
PIPELINE_ARG_SPEC = dict(
    pipeline=dict(type="str"),
)
