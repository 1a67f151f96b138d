#!/usr/bin/python
# Copyright: hfl.orchestration developers
# Apache License 2.0

# The work is done by the action plugin plugins/action/fl_pki_info.py on the controller;
# this file carries its documentation, as Ansible expects for action plugins.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fl_pki_info
short_description: Say which of a pipeline's credentials on the controller must be made
version_added: 0.1.0
description:
  - Reads the pipeline's credentials folder (role fl_pki's layout) on the controller, in the
    controller's own process, and says what must be made or made again; changes nothing.
  - The CA (C(ca.key), C(ca.crt)) must be made when either is missing or unreadable, the key is
    not ECDSA P-256 or not mode 0600, the certificate is not the key's, not the self-signed
    C(hfl-<pipeline> CA) with C(CA:TRUE, pathlen:0), or expires within 30 days.
  - A subject's key and certificate (each service of the plan, then the controller) must be made
    for the same reasons, and when the certificate's subject is not C(CN=<name>, OU=<role>)
    (the controller's OU is C(controller)), its names or extended key uses are not the plan's,
    it is marked a CA, or the pipeline's CA did not sign it. A new CA makes them all.
  - Role fl_pki runs community.crypto only for what this lists.
author:
  - hfl.orchestration developers (@hfl)
requirements:
  - The controller's Python, 3.11 or later (ansible-core 2.19's), with C(cryptography) (which
    community.crypto needs too).
extends_documentation_fragment:
  - hfl.orchestration.attributes.info_module
  - hfl.orchestration.attributes
  - hfl.orchestration.attributes.controller
options:
  dir:
    description: The pipeline's credentials folder on the controller (C(hfl_pki_dir)).
    type: path
    required: true
  plan:
    description: The plan from M(hfl.orchestration.fl_plan) (its pipeline, runtime, services).
    type: dict
    required: true
  controller_name:
    description: Subject CN and DNS name of the controller's client certificate.
    type: str
    required: true
  rotate:
    description: Every subject must be made anew (new keys and certificates, same CA).
    type: bool
    default: false
  rotate_ca:
    description: The CA and every subject must be made anew.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Find what the pipeline's credentials lack
  hfl.orchestration.fl_pki_info:
    dir: "{{ hfl_pipeline_dir }}/pki"
    plan: "{{ hfl_plan }}"
    controller_name: hfl-controller
  register: hfl_pki_found

- name: Show why each subject must be made
  ansible.builtin.debug:
    msg: "{{ item.name }}: {{ item.reason }}"
  loop: "{{ hfl_pki_found.subjects | selectattr('reason') }}"
"""

RETURN = r"""
dirs:
  description: Folders to create, or to make mode 0700.
  returned: always
  type: list
  elements: str
ca:
  description: Why the CA must be made, or null.
  returned: always
  type: str
  sample: "ca.crt: it expires on 2027-01-05"
ca_renew:
  description: The CA's certificate must be signed again only because it expires.
  returned: always
  type: bool
ca_name:
  description: The CA's subject CN.
  returned: always
  type: str
  sample: hfl-demo CA
subjects:
  description:
    - Every subject, in the plan's order, then the controller.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Subject CN.
      type: str
    base:
      description: Its files' path under O(dir) without the extension (C(.key), C(.crt)).
      type: str
      sample: services/la1
    ou:
      description: Subject OU, the service's role (C(controller) for the controller).
      type: str
    sans:
      description: Subject alternative names, as community.crypto takes them.
      type: list
      elements: str
      sample: ["DNS:la1", "IP:127.0.0.1"]
    usages:
      description: Extended key uses.
      type: list
      elements: str
      sample: [serverAuth, clientAuth]
    controller:
      description: Whether this is the controller's certificate.
      type: bool
    reason:
      description: Why its key or certificate must be made, or null.
      type: str
      sample: "la1.crt: its subject is not CN=la1, OU=local_aggregator"
    renew:
      description: Its certificate must be signed again only because it expires.
      type: bool
"""
