# Copyright: hfl.orchestration developers
# Apache License 2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fl_service_source
version_added: 0.2.0
short_description: The fl_service source this collection ships, and its version and sha256
description:
  - Reads, on the controller, the C(fl_service) package and C(pyproject.toml) at the
    collection's top folder (where role fl_runtime packs them from).
  - Returns the folder, the files to ship and the stamp a host keeps of the source it installed
    (its version, a sha256 of the source and its dependencies). Role fl_runtime reinstalls when a
    host's stamp differs; role fl_placement passes the sha256 to M(hfl.orchestration.fl_process)
    as its O(hfl.orchestration.fl_process#module:revision), so services restart on new code.
  - The sha256 covers the package's files but bytecode and the C(build-system), C(project) and
    C(tool.setuptools) tables of C(pyproject.toml), so a lint or test setting changes nothing.
  - Takes no terms.
author:
  - hfl.orchestration developers (@hfl)
"""

EXAMPLES = r"""
- name: The fl_service version the controller ships
  ansible.builtin.debug:
    msg: "{{ lookup('hfl.orchestration.fl_service_source').stamp.version }}"
"""

RETURN = r"""
_raw:
  description: One dictionary.
  type: list
  elements: dict
  contains:
    root:
      description: The folder holding C(fl_service/) and C(pyproject.toml).
      type: str
    files:
      description: The files to ship, relative to RV(_raw.root), sorted.
      type: list
      elements: str
    stamp:
      description: What a host records of the source it installed.
      type: dict
      contains:
        version:
          description: The C([project]) version in C(pyproject.toml).
          type: str
        sha256:
          description: Digest of the source (see the description).
          type: str
        dependencies:
          description: The C([project]) dependencies; a change makes pip install them too.
          type: list
          elements: str
"""

# Ansible's layout puts the documentation strings above the imports.
import os  # noqa: E402

from ansible.errors import AnsibleError  # noqa: E402
from ansible.plugins.lookup import LookupBase  # noqa: E402
from ansible_collections.hfl.orchestration.plugins.plugin_utils import (  # noqa: E402
    fl_service_source,
)

# plugins/lookup/ -> the collection's top folder.
COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if terms:
            raise AnsibleError("fl_service_source takes no terms")
        try:
            return [fl_service_source.shipped_source(COLLECTION_ROOT)]
        except (OSError, ValueError, fl_service_source.SourceError) as e:
            raise AnsibleError(f"fl_service_source: {e}") from e
