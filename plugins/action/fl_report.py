# Copyright: hfl.orchestration developers
# Apache License 2.0
"""Action plugin behind hfl.orchestration.fl_report (docs: plugins/modules/fl_report.py).

Controller-side: reads the collected results and the orchestrator's events from the pipeline's
state folder and writes the HTML report with plugin_utils.report.
"""

from __future__ import annotations

import os
from pathlib import Path

from ansible.plugins.action import ActionBase
from ansible_collections.hfl.orchestration.plugins.action.fl_plan import inventory_view
from ansible_collections.hfl.orchestration.plugins.module_utils.args_common import (
    PIPELINE_ARG_SPEC,
)
from ansible_collections.hfl.orchestration.plugins.plugin_utils import report, topology
from ansible_collections.hfl.orchestration.plugins.plugin_utils.observation import fleet_of


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec=dict(
            pipeline_dir=dict(type="path"),
            dest=dict(type="path"),
            **PIPELINE_ARG_SPEC,
        ))[1]
        try:
            topo = topology.build(*inventory_view(task_vars), pipeline=args["pipeline"])
        except topology.TopologyError as e:
            return dict(result, failed=True, msg="the inventory is not a valid pipeline:\n"
                        + "\n".join(e.errors))
        p = topo.pipeline
        folder = Path(args["pipeline_dir"] or
                      os.path.join(os.path.expanduser(p.state_dir), p.name))
        results = report.load_results(folder / "results")
        events = report.load_jsonl(folder / "events.jsonl")
        page = report.render(p.name, results, events, fleet_of(topo).cost, p.budget)
        dest = Path(args["dest"] or folder / "report.html")
        old = dest.read_text() if dest.exists() else None
        if old != page and not self._task.check_mode:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(page)
        return dict(result, changed=old != page, path=str(dest), services=len(results),
                    events=len(events))
