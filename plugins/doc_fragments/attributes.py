# Copyright: hfl.orchestration developers
# Apache License 2.0
"""The attributes every module of the collection shares (the style of community.general's
``attributes`` fragment): each supports check mode fully, none supports diff mode, all run on
POSIX hosts. A module adds its own ``details`` under ``attributes`` where it has more to say."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in C(check_mode) and return changed status prediction without modifying
      target.
    support: full
  diff_mode:
    description: Returns details on what has changed (or possibly needs changing in
      C(check_mode)), when in diff mode.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
"""

    # With DOCUMENTATION, for a module that only reads. List it before
    # hfl.orchestration.attributes: where two fragments set one key, the first listed wins.
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    details:
      - This action does not modify state.
  diff_mode:
    support: N/A
    details:
      - This action does not modify state.
"""

    # With DOCUMENTATION, for a module whose action plugin does the work on the controller.
    CONTROLLER = r"""
options: {}
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options
      can be executed on the controller.
    support: full
    details:
      - Runs wholly on the controller, in the controller's Python; the target host is not
        contacted.
"""

    # With DOCUMENTATION, for a module of the action group C(hfl.orchestration.hfl).
    ACTION_GROUP = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/hfl.orchestration.hfl) in C(module_defaults) to set defaults for this
      module.
    support: full
    membership:
      - hfl.orchestration.hfl
"""
