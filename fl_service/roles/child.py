"""A child's end of the link to its parent (used by clients and LAs).

Joins with backoff while the parent is down (e.g. a GA restart), long-polls for tasks, and
switches parent live: `/control {"parent": ...}`, `{"reload": true}` or SIGHUP. A switch breaks
the poll on the old parent, tells it we leave (so its open round stops waiting for us) and joins
the new one; the next task comes from the new parent.

Every join declares how many examples this child trains on (`declared()`: a client's partition
size, known after warm-up; an LA's children's declared sum), because the parent caps each train
update at a multiple of it. Before a train update goes up, a changed count is declared again
(a re-join over the same link); a child that knew none declares its first reply's count. After
any rejected or undelivered update the next poll joins again, so a parent that restarted (and
forgot the declarations) learns them before the next round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fl_service.config import load_config, parse_address, tls_enabled
from fl_service.metrics import ServiceState
from fl_service.transport import (
    FINISHED,
    LinkCounters,
    ParentLink,
    ParentUnavailable,
    client_context,
)

log = logging.getLogger("fl_service.child")
BACKOFF_MAX_S = 5.0

Task = tuple[ParentLink, dict[str, Any], list[np.ndarray]]


class ParentSide:
    def __init__(self, cfg: dict[str, Any], state: ServiceState, links: LinkCounters,
                 declared: Callable[[], int] | None = None) -> None:
        """`declared()`: the example count to declare now, 0 when not known (default: the
        state's num_examples, which a client sets after warm-up and after each reply)."""
        self.cfg = cfg
        self.state = state
        self.links = links
        # Our certificate, shown to every parent we join (ConfigError if its files are bad).
        self._tls = (client_context(cfg["tls_cert"], cfg["tls_key"], cfg["tls_ca"])
                     if tls_enabled(cfg) else None)
        self.declared = declared or (lambda: int(state.num_examples))
        self._declared_on: int | None = None  # what the current link's parent was told
        self._lock = threading.Lock()
        self._switched = threading.Condition(self._lock)
        self._generation = 0  # bumped by every switch
        self._polled_generation = 0
        self.link = self._new_link(cfg["parent"])
        self._joined: ParentLink | None = None  # the link we last joined through
        self._backoff = 0.2

    def _new_link(self, parent: str) -> ParentLink:
        role = self.cfg["role"]
        return ParentLink(parse_address(parent), self.cfg["name"], role, self.links, self._tls)

    def current(self) -> ParentLink:
        with self._lock:
            return self.link

    def _pause(self, seconds: float) -> None:
        """Sleep up to `seconds`, cut short by a parent switch."""
        with self._switched:
            self._switched.wait_for(lambda: self._generation != self._polled_generation, seconds)

    def next_task(self, after: str) -> Task | str | None:
        """A task from the current parent, FINISHED, or None (nothing yet; call again)."""
        with self._lock:
            link = self.link
            self._polled_generation = self._generation
        try:
            if self._joined is not link:
                self._join(link)
            got = link.poll_task(after)
        except ParentUnavailable as exc:
            if link is not self.current():
                return None  # switched away while we waited on the old parent
            self._joined = None
            self.state.set(parent_name=None)
            log.warning("%s: parent unavailable (%s); retrying in %.1f s", self.cfg["name"], exc,
                        self._backoff)
            self._pause(self._backoff)
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
            return None
        self._backoff = 0.2
        if got is None or got == FINISHED:
            return got
        header, arrays = got
        return link, header, arrays

    def _join(self, link: ParentLink) -> None:
        """Join through `link`. /status shows a failed attempt's error and when it began
        (`parent_error`, `parent_error_age_s`) until a join succeeds, so placement can tell a
        parent still starting from one this child cannot resolve or reach."""
        began = time.monotonic()
        count = self.declared() or None
        try:
            name = link.join(count)
        except ParentUnavailable as exc:
            if link is self.current():
                self.state.set(parent_error=str(exc), parent_error_at=began)
            raise
        self.state.set(parent_name=name, parent_error=None, parent_error_at=None)
        self._joined, self._declared_on = link, count

    def send_update(self, link: ParentLink, header: dict[str, Any],
                    arrays: list[np.ndarray] | None) -> None:
        if link is not self.current():
            log.info("%s: parent changed during the task; update dropped", self.cfg["name"])
            return
        try:
            if arrays is not None and "num_examples" in header:  # a train update
                self._declare(link, self.declared() or header["num_examples"])
            accepted, reason = link.send_update(header, arrays)
        except ParentUnavailable as exc:
            log.warning("%s: update not delivered: %s", self.cfg["name"], exc)
            self._joined = None
            return
        if not accepted:
            log.warning("%s: update not accepted: %s", self.cfg["name"], reason)
            self._joined = None

    def _declare(self, link: ParentLink, count: int) -> None:
        if count != self._declared_on:
            link.join(count)
            self._declared_on = count

    def switch(self, parent: str) -> bool:
        """Move to `parent` (host:port) and tell the old one we leave; False if it is the
        current one."""
        old = self.move(parent)
        if old is None:
            return False
        self.farewell(old)
        return True

    def move(self, parent: str) -> ParentLink | None:
        """Point at `parent` (host:port): the poll on the old parent breaks and the next task
        comes from the new one. The old link, for `farewell`; None if `parent` is current."""
        parse_address(parent)
        with self._lock:
            old = self.link
            if f"{old.address[0]}:{old.address[1]}" == parent:
                return None
            self.link = self._new_link(parent)
            self._generation += 1
            self._switched.notify_all()
        self.state.set(parent=parent, parent_name=None, parent_error=None, parent_error_at=None)
        old.abort()
        log.info("%s: parent switched %s -> %s", self.cfg["name"], old.peer, parent)
        return old

    def farewell(self, old: ParentLink) -> None:
        """Tell the parent of `old` (a link `move` replaced) that we left, so its open round
        stops waiting for us; not if we have since moved back to it."""
        if self.current().address == old.address:
            return
        farewell = ParentLink(old.address, self.cfg["name"], self.cfg["role"], self.links,
                              self._tls)
        farewell.peer = old.peer
        try:
            farewell.leave()
        except ParentUnavailable as exc:
            log.info("%s: could not tell %s we leave: %s", self.cfg["name"], old.peer, exc)
        finally:
            farewell.close()

    def reload(self) -> bool:
        """Re-read the config file; a changed `parent` switches."""
        fresh = load_config(self.cfg["role"], self.cfg["config_path"] or None)
        return self.switch(fresh["parent"])

    def control(self, message: dict[str, Any]) -> dict[str, Any]:
        if "parent" in message:
            switched = self.switch(str(message["parent"]))
        elif message.get("reload"):
            switched = self.reload()
        else:
            raise ValueError('expected {"parent": "host:port"} or {"reload": true}')
        return {"parent": self.state.parent, "switched": switched}
