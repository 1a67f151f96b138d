#!/usr/bin/python
# Copyright: hfl.orchestration developers
# Apache License 2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fl_status_info
short_description: Read the /status of fl_service services from the host it runs on
version_added: 0.2.0
description:
  - Fetches C(GET /status) of each service given, concurrently, from the target host (run it
    where the services are reachable, on their own host or on the global aggregator's host,
    which reaches every service of its pipeline).
  - A service that does not answer within O(timeout) is reported with C(reachable=false) and the
    reason; without O(wait_for) the module does not fail for it, since a dead service is
    information here (the orchestrator reads it so).
  - With O(wait_for) it polls every O(poll_s) seconds until every service answers
    (C(reachable)) or every service without a O(services[].parent) reports state C(finished)
    (C(finished)), and fails as soon as waiting cannot help, naming the service and the cause
    (docs/architecture.md, section Failing fast).
  - Such failures are a child that cannot reach its parent although the parent answers /status
    (its C(parent_error) from a join attempt that began after the parent was first seen
    answering; attempts that met a parent still starting do not count); with
    O(podman_pipeline), a service whose pod is missing or whose container exited, with the end
    of its log; a O(services[].started) service that stopped answering; with C(finished), the
    global aggregator not answering; a service whose URL is answered by another service (its
    C(/status) must name the service, O(pipeline) when given and its pid in O(pids) when
    given; else another process holds its port).
  - Otherwise it fails after O(wait_timeout) seconds, listing what it still waited for.
  - Reads only; changes nothing.
  - This module was called C(hfl.orchestration.fl_status) before release 0.2.0; that name still
    works, with a deprecation warning, until release 1.0.0.
author:
  - hfl.orchestration developers (@hfl)
requirements:
  - Python 3.8 or later on the host it runs on (ansible-core's target Python; the module needs
    nothing beyond it).
  - With O(podman_pipeline), C(podman) on that host, run as the user that runs the pods.
extends_documentation_fragment:
  - hfl.orchestration.attributes.info_module
  - hfl.orchestration.attributes
  - hfl.orchestration.attributes.action_group
  - hfl.orchestration.tls_client
options:
  services:
    description: The services to read.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Service name; the key of the result.
        type: str
        required: true
      url:
        description:
          - Full URL of its status page, e.g. C(https://127.0.0.1:8080/status) (C(http://) for a
            pipeline with C(hfl_insecure=true)).
        type: str
        required: true
      parent:
        description:
          - Service name of its parent (the plan's C(parent)); empty for the global aggregator.
          - Used by O(wait_for) only.
        type: str
      started:
        description:
          - It answered /status before (placement started it and waited for it), so while
            waiting, a read that finds it not answering means it stopped, and the wait fails at
            once (after three timed-out reads in a row for a slow answer), with the end of its
            O(services[].log).
        type: bool
        default: false
      log:
        description: Its log file on the host the module runs on, for the failure message.
        type: path
      virtual_clients:
        description:
          - A pool's virtual clients (the plan's C(virtual_clients)), each to a dict with its
            C(parent) (service name). O(wait_for) waits for each as for a service of its own,
            read from the pool's C(/status), and judges it against its own parent.
        type: dict
      wait:
        description:
          - C(false) lists it only so that its children can be judged (a parent on another host,
            whose own host checks it); the wait neither waits for it nor fails on it.
        type: bool
        default: true
  timeout:
    description: Seconds to wait for each service's answer.
    type: float
    default: 3.0
  wait_for:
    description:
      - C(none) reads once. C(reachable) waits until every service answers /status and no child
        is left with a join error. C(finished) waits until every service without a parent
        reports state C(finished).
    type: str
    choices: [none, reachable, finished]
    default: none
  wait_timeout:
    description: Seconds O(wait_for) may take before the module fails.
    type: int
    default: 180
  poll_s:
    description: Seconds between two reads while waiting.
    type: float
    default: 2.0
  pipeline:
    description:
      - While waiting, each service's C(/status) must name this pipeline (as well as the service's
        own name, which is always checked), else the wait fails at once (something else answers
        on its port).
      - For a pipeline with mutual TLS this needs O(client_cert) (without one a service's
        C(/status) names no pipeline and the check fails).
    type: str
  pids:
    description:
      - While waiting, the pid each named service must report in its C(/status) (the process
        runtime's pids, as C(hfl.orchestration.fl_process) returns them), else the wait fails at
        once.
      - Like O(pipeline), needs O(client_cert) for a pipeline with mutual TLS (without one a
        service's C(/status) names no pid).
    type: dict
    default: {}
  podman_pipeline:
    description:
      - While waiting, read the pods labelled C(hfl.io/pipeline=<this>) on the host the module
        runs on; a service not answering whose pod is missing or whose container exited (or
        was restarted) fails the wait at once with podman's state and the end of its log.
    type: str
"""

EXAMPLES = r"""
- name: Read one service
  hfl.orchestration.fl_status_info:
    services:
      - name: ga
        url: http://127.0.0.1:8080/status
  register: hfl_ga

- name: Show its round
  ansible.builtin.debug:
    msg: "{{ hfl_ga.statuses.ga.global_round }}"

- name: Wait until every service of the plan answers, failing at once on a dead pod
  hfl.orchestration.fl_status_info:
    services:
      - {name: ga, url: "http://127.0.0.1:8080/status"}
      - {name: la1, url: "http://127.0.0.1:8081/status", parent: ga}
    wait_for: reachable
    wait_timeout: 180
    pipeline: demo
    podman_pipeline: demo

- name: Read a service of a pipeline with mutual TLS, from the global aggregator's host
  hfl.orchestration.fl_status_info:
    services:
      - {name: la1, url: "https://10.0.0.2:8080/status"}
    ca: ~/.local/state/hfl/demo/ga/tls/ca.crt
    client_cert: ~/.local/state/hfl/demo/ga/tls/service.crt
    client_key: ~/.local/state/hfl/demo/ga/tls/service.key

- name: Read every service of the plan
  hfl.orchestration.fl_status_info:
    services: "{{ hfl_status_services }}"
  vars:
    hfl_status_services: >-
      [{% for s in hfl_plan.services %}{"name": "{{ s.name }}",
      "url": "http://{{ s.address }}:{{ s.port }}/status"}{{ "," if not loop.last }}{% endfor %}]
"""

RETURN = r"""
statuses:
  description:
    - Service name (O(services[].name)) to its C(/status) document (all its keys are in
      docs/architecture.md) plus C(reachable=true), or C({reachable=false, error, timed_out})
      when it did not answer. The keys most used are listed below.
    - Read without O(client_cert) from a pipeline with mutual TLS, a document holds only
      C(alive=true) and C(reachable).
  returned: always
  type: dict
  sample:
    ga: {reachable: true, name: ga, role: global_aggregator, pipeline: demo, state: training,
         global_round: 3, pid: 4242}
    la2: {reachable: false, error: "[Errno 111] Connection refused", timed_out: false}
  contains:
    reachable:
      description: Whether the service answered with a JSON object.
      type: bool
    error:
      description: Why it did not answer (when C(reachable=false)).
      type: str
      sample: "[Errno 111] Connection refused"
    timed_out:
      description: It did not answer within O(timeout) (when C(reachable=false)).
      type: bool
    name:
      description: The service's name, as its config gives it.
      type: str
      sample: la1
    role:
      description: Its role.
      type: str
      choices: [global_aggregator, local_aggregator, client]
    pipeline:
      description: The pipeline it belongs to.
      type: str
    parent:
      description: Address (C(host:port)) of its parent; null for the global aggregator.
      type: str
    parent_name:
      description: Service name of its parent.
      type: str
    parent_error:
      description: The error of its last failed attempt to join its current parent; null once a
        join succeeded.
      type: str
      sample: "ga:8080: [Errno -2] Name or service not known"
    state:
      description: Where it is in the protocol.
      type: str
      choices: [starting, waiting, training, aggregating, finished]
    global_round:
      description: Its current global round (C(hfl_global_round) of its C(/metrics)).
      type: int
    global_rounds:
      description: The global aggregator's last global round to run, the value in force; null on
        the other services.
      type: int
    last_metrics:
      description: Its last test C(accuracy) and C(loss).
      type: dict
      sample: {accuracy: 0.91, loss: 0.32}
    recent_metrics:
      description: Global aggregator only, V([]) elsewhere; C([global_round, accuracy, loss]) of
        its last 64 global rounds, oldest first.
      type: list
      elements: list
      sample: [[9, 0.9, 0.35], [10, 0.91, 0.32]]
    links:
      description: Per peer, C(sent_bytes) and C(received_bytes) so far.
      type: dict
      sample: {ga: {sent_bytes: 1234567, received_bytes: 2345678}}
    children:
      description: Names of the children connected to it, sorted (aggregators; empty on a client).
      type: list
      elements: str
    pid:
      description: Its process id on its host (the process runtime checks it).
      type: int
elapsed_s:
  description: Seconds the module read or waited.
  returned: always
  type: float
  sample: 4.2
"""

import functools  # noqa: E402 - after the docs
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.hfl.orchestration.plugins.module_utils.args_common import (  # noqa: E402
    TLS_CLIENT_ARG_SPEC,
    TLS_CLIENT_REQUIRED_TOGETHER,
)
from ansible_collections.hfl.orchestration.plugins.module_utils.fl_status import (  # noqa: E402
    WaitFailed,
    Watch,
    fetch_all,
    podman_probe,
    tls_options,
)


def run_module():
    module = AnsibleModule(
        argument_spec=dict(
            services=dict(type="list", elements="dict", required=True, options=dict(
                name=dict(type="str", required=True),
                url=dict(type="str", required=True),
                parent=dict(type="str"),
                started=dict(type="bool", default=False),
                log=dict(type="path"),
                virtual_clients=dict(type="dict"),
                wait=dict(type="bool", default=True),
            )),
            timeout=dict(type="float", default=3.0),
            wait_for=dict(type="str", choices=["none", "reachable", "finished"],
                          default="none"),
            wait_timeout=dict(type="int", default=180),
            poll_s=dict(type="float", default=2.0),
            pipeline=dict(type="str"),
            pids=dict(type="dict", default={}),
            podman_pipeline=dict(type="str"),
            **TLS_CLIENT_ARG_SPEC,
        ),
        required_together=TLS_CLIENT_REQUIRED_TOGETHER,
        supports_check_mode=True,
    )
    p = module.params
    began = time.monotonic()
    fetch = functools.partial(fetch_all, tls=tls_options(p["ca"], p["client_cert"],
                                                         p["client_key"]))
    if p["wait_for"] == "none":
        statuses = fetch(p["services"], p["timeout"])
        module.exit_json(changed=False, statuses=statuses,
                         elapsed_s=round(time.monotonic() - began, 1))
    probe = None
    if p["podman_pipeline"]:
        probe = podman_probe(module.run_command, p["podman_pipeline"])
    pids = {str(name): int(pid) for name, pid in p["pids"].items() if pid is not None}
    watch = Watch(p["services"], p["timeout"], probe, fetch=fetch, pipeline=p["pipeline"],
                  pids=pids)
    try:
        statuses = watch.wait(p["wait_for"], p["wait_timeout"], p["poll_s"])
    except WaitFailed as e:
        msg = str(e)
        if p["podman_pipeline"] and any(x in msg for x in ("[Errno -2]", "[Errno -3]")):
            msg += ("\n(podman 4.3 resolves the pods' network aliases only with the CNI dnsname "
                    "plugin, Debian golang-github-containernetworking-plugin-dnsname, and only on "
                    "networks created after it was installed; scripts/podman-check.sh tests it)")
        module.fail_json(msg=msg, statuses=e.statuses,
                         elapsed_s=round(time.monotonic() - began, 1))
    module.exit_json(changed=False, statuses=statuses,
                     elapsed_s=round(time.monotonic() - began, 1))


def main():
    run_module()


if __name__ == "__main__":
    main()
