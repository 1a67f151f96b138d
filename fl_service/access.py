"""Who may do what on a service's port, from the caller's certificate (docs/security.md).

With mutual TLS on (tls_cert, tls_key and tls_ca set), http_server hands each route the caller's
`Peer` (its certificate's CN and OU, verified against the pipeline's CA) or None (no certificate:
such a caller only ever reaches GET /status). Then:
- GET /status tells a caller without a certificate only that the service is alive; any
  certificate of the pipeline sees the whole document and /metrics.
- The FL protocol (join, task, update, leave) is for children: the certificate's role (OU) must
  be one that may be a child of this aggregator, and the name a request speaks for must be the
  certificate's name (CN), or one of the virtual clients of a pool (`<CN>-<n>`) that the CA
  listed as the certificate's DNS names. Names are no longer believed as sent.
- POST /control is for the controller's certificate (CN `controller_name`, OU controller) and
  the service's own (whoever holds its key already is the service).
With TLS off (plain HTTP, `hfl_insecure`) nothing is checked: anyone who reaches the port may
do anything, which fl_service says in a WARNING line at start.
"""

from __future__ import annotations

import logging
from typing import Any

from fl_service.config import CLIENT, GA, LA, tls_enabled
from fl_service.http_server import Peer, Reply, json_reply

log = logging.getLogger("fl_service.access")
CONTROLLER = "controller"  # the OU of the controller's certificate
# The roles that may join each aggregator: a GA's children are LAs, or clients in flat FL.
CHILD_ROLES = {GA: (LA, CLIENT), LA: (CLIENT,)}
ALIVE = {"alive": True}  # all of /status a caller without a certificate gets


class Access:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.enforced = tls_enabled(cfg)
        self.name = cfg["name"]
        self.role = cfg["role"]
        self.controller = Peer(cfg["controller_name"], CONTROLLER)
        self.child_roles = CHILD_ROLES.get(self.role, ())

    def sees_status(self, peer: Peer | None) -> bool:
        """Whether `peer` is shown the whole /status (else ALIVE)."""
        return not self.enforced or peer is not None

    def child(self, peer: Peer | None, name: str) -> str | None:
        """Why `peer` may not speak as child `name` on the FL protocol; None if it may."""
        if not self.enforced:
            return None
        if peer is None:
            return "a client certificate is required"
        if peer.role not in self.child_roles:
            return (f"certificate {peer.name!r} is of role {peer.role!r}; a {self.role}'s "
                    f"children are of role {' or '.join(self.child_roles) or 'none'}")
        if name != peer.name and name not in peer.members:
            return f"certificate {peer.name!r} may not speak for {name!r}"
        return None

    def control(self, peer: Peer | None) -> str | None:
        """Why `peer` may not POST /control; None if it may."""
        if not self.enforced or (peer and ((peer.name, peer.role) == self.controller[:2]
                                           or peer.name == self.name)):
            return None
        who = "no certificate" if peer is None else f"certificate {peer.name!r} ({peer.role})"
        return (f"only the controller ({self.controller.name}) or {self.name} itself may "
                f"control {self.name}, not {who}")


def forbidden(where: str, peer: Peer | None, reason: str) -> Reply:
    """403 with `reason`, in one log line."""
    log.warning("refused %s from %s: %s (HTTP 403)", where,
                "no certificate" if peer is None else f"certificate {peer.name!r}", reason)
    return json_reply({"error": reason}, 403)
