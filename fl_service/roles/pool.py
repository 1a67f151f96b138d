"""A pool: many clients ("virtual clients") in one client process, to rehearse a large fleet on
one machine (config key `virtual_clients`; docs/architecture.md "Virtual clients (a pool)").

Each virtual client is an ordinary client to its parent: its own name, ServiceState, link
counters, ParentSide (join, poll, update, switch) and ClientRunner (its own Flower Context), and
its own thread polling for tasks. What they can share they do: the process, its one HTTP port,
the datasets (loaded once, fl_service.apps.builtin) and one results.jsonl. A semaphore of
`threads` lets only that many of them load or train at a time.

The port answers for all of them: /status is the pool's own document with every virtual client's
under `virtual_clients`, /metrics every virtual client's series, and /control moves them
(`{"client": NAME, "parent": ...}`, `{"parents": {NAME: ...}}`, `{"reload": true}` or SIGHUP:
every one whose parent in the config file changed). A move of many answers once each points at
its new parent; their farewells to the old parents follow in the background.
"""

from __future__ import annotations

import logging
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fl_service.config import CLIENT, load_config, parse_address, virtual_client_configs
from fl_service.flower_app import ClientRunner
from fl_service.metrics import ResultsWriter, ServiceState, prometheus_text
from fl_service.roles.child import ParentSide
from fl_service.roles.client import ClientWork
from fl_service.roles.service import Service
from fl_service.transport import LinkCounters, ParentLink

log = logging.getLogger("fl_service.pool")
# Farewells to the old parents of moved virtual clients, this many at a time.
SWITCH_WORKERS = 32
CONTROL_FORMS = ('{"client": NAME, "parent": "host:port"}, {"parents": {NAME: "host:port", ...}}'
                 ' or {"reload": true}')


class VirtualClient:
    """One client of the pool, with all a client process has of its own but the port."""

    def __init__(self, cfg: dict[str, Any], runner: ClientRunner, state_dir: Path,
                 gate: threading.Semaphore) -> None:
        self.name = cfg["name"]
        self.links = LinkCounters()
        self.state = ServiceState(cfg, self.links)
        self.parent = ParentSide(cfg, self.state, self.links)
        self.work = ClientWork(runner, self.state, self.parent,
                               ResultsWriter(state_dir, self.state), gate)


def pool_state(states: list[str]) -> str:
    """The pool's state from its virtual clients': finished when all are, training when any
    is, starting while any is, else waiting."""
    if all(state == "finished" for state in states):
        return "finished"
    for state in ("training", "starting"):
        if state in states:
            return state
    return "waiting"


class Pool(Service):
    def __init__(self, cfg: dict[str, Any]) -> None:
        configs = virtual_client_configs(cfg)
        # Every app first, as a client does: a bad setting stops us before anything is written.
        runners = [ClientRunner(member) for member in configs]
        super().__init__(cfg)
        gate = threading.Semaphore(cfg["threads"])
        self.members = {member["name"]: VirtualClient(member, runner, self.state_dir, gate)
                        for member, runner in zip(configs, runners, strict=True)}
        self._failed = threading.Event()
        self._failure = ""

    # ------------------------------------------------------------ running
    def run(self) -> None:
        for member in self.members.values():
            threading.Thread(target=self._run_member, args=(member,), name=member.name,
                             daemon=True).start()
        log.info("%s: %d virtual clients", self.cfg["name"], len(self.members))
        self._failed.wait()
        # A virtual client's failure ends the process, as it would end a client process.
        raise RuntimeError(self._failure)

    def _run_member(self, member: VirtualClient) -> None:
        try:
            member.work.run()
        except BaseException:
            self._failure = f"virtual client {member.name} failed:\n{traceback.format_exc()}"
            self._failed.set()

    # ------------------------------------------------------------ HTTP
    def status(self) -> dict[str, Any]:
        members = {name: member.state.status() for name, member in self.members.items()}
        return {**self.state.status(),
                "state": pool_state([doc["state"] for doc in members.values()]),
                "virtual_clients": members}

    def metrics_text(self) -> bytes:
        return prometheus_text(*(member.state for member in self.members.values()))

    def control(self, message: dict[str, Any]) -> dict[str, Any]:
        if "client" in message:
            name = str(message["client"])
            member = self._member(name)
            if "parent" not in message:
                raise ValueError(f'{{"client": {name!r}}} needs "parent": "host:port"')
            parent = str(message["parent"])
            parse_address(parent)
            return {"client": name, "parent": parent, "switched": member.parent.switch(parent)}
        if "parents" in message:
            moves = message["parents"]
            if not isinstance(moves, dict):
                raise ValueError(f'"parents" must map virtual client names to host:port, '
                                 f"got {type(moves).__name__}")
            for name, parent in moves.items():  # all checked before any moves
                self._member(name)
                parse_address(str(parent), f"parents.{name}")
            return {"switched": self._switch({name: str(p) for name, p in moves.items()})}
        if message.get("reload"):
            return {"switched": self.reload()}
        if "parent" in message:
            raise ValueError(f"{self.cfg['name']} is a pool of virtual clients: it needs "
                             f'"client" (one) or "parents" (many): {CONTROL_FORMS}')
        raise ValueError(f"expected {CONTROL_FORMS}")

    def _member(self, name: str) -> VirtualClient:
        member = self.members.get(name)
        if member is None:
            raise ValueError(f"no virtual client {name!r} in pool {self.cfg['name']}")
        return member

    def _switch(self, parents: dict[str, str]) -> list[str]:
        """Move each named virtual client to its parent; the names of those that moved. The
        farewells to their old parents go on in the background, SWITCH_WORKERS at a time: one
        to a dead host waits out its timeout, and the caller (the orchestrator, hundreds of
        moves at once) needs only the moves."""
        moved = [(name, old) for name, parent in parents.items()
                 if (old := self.members[name].parent.move(parent)) is not None]
        if moved:
            threading.Thread(target=self._farewells, args=(moved,), name="farewells",
                             daemon=True).start()
        return [name for name, _ in moved]

    def _farewells(self, moved: list[tuple[str, ParentLink]]) -> None:
        with ThreadPoolExecutor(min(SWITCH_WORKERS, len(moved))) as workers:
            for name, old in moved:
                workers.submit(self.members[name].parent.farewell, old)

    def reload(self) -> list[str]:
        """Re-read the config file; each virtual client whose parent changed switches. Virtual
        clients are neither added nor removed (placement restarts a pool whose list changed)."""
        fresh = load_config(CLIENT, self.cfg["config_path"] or None)
        parents = {entry["name"]: entry["parent"] for entry in fresh["virtual_clients"]}
        if set(parents) != set(self.members):
            log.warning("%s: reload: the config lists other virtual clients than this pool "
                        "runs; only the parents of those it runs are reloaded (restart the "
                        "pool for the rest)", self.cfg["name"])
        return self._switch({name: parent for name, parent in parents.items()
                             if name in self.members})
