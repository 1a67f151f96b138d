# Copyright: hfl.orchestration developers
# Apache License 2.0
"""Action plugin behind hfl.orchestration.fl_pki_info (docs: plugins/modules/fl_pki_info.py).

Controller-side and read-only: says which of a pipeline's credentials must be made
(plugin_utils.pki), in the controller's process, so a re-run of role fl_pki with nothing to do
runs no module at all.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.hfl.orchestration.plugins.plugin_utils import pki


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec=dict(
            dir=dict(type="path", required=True),
            plan=dict(type="dict", required=True),
            controller_name=dict(type="str", required=True),
            rotate=dict(type="bool", default=False),
            rotate_ca=dict(type="bool", default=False),
        ))[1]
        report = pki.check(args["dir"], args["plan"], args["controller_name"],
                           rotate=args["rotate"], rotate_ca=args["rotate_ca"])
        return dict(result, changed=False, **report)
