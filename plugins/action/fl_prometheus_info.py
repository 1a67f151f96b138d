# Copyright: hfl.orchestration developers
# Apache License 2.0
"""Action plugin behind hfl.orchestration.fl_prometheus_info (docs:
plugins/modules/fl_prometheus_info.py).

Controller-side and read-only: the plan's scrape targets and the pipeline's constants for the
rules (plugin_utils.prometheus), with the link weights and budget of the inventory.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.hfl.orchestration.plugins.action.fl_plan import inventory_view
from ansible_collections.hfl.orchestration.plugins.plugin_utils import prometheus, topology
from ansible_collections.hfl.orchestration.plugins.plugin_utils.observation import fleet_of


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec=dict(
            plan=dict(type="dict", required=True),
            stall_factor=dict(type="float", default=3.0),
        ))[1]
        the_plan = args["plan"]
        try:
            topo = topology.build(*inventory_view(task_vars), pipeline=the_plan["pipeline"])
            constants = prometheus.pipeline_rules(topo.pipeline.name, fleet_of(topo).cost,
                                                  topo.pipeline.budget, args["stall_factor"])
        except topology.TopologyError as e:
            return dict(result, failed=True, msg="the inventory is not a valid pipeline:\n"
                        + "\n".join(e.errors))
        except ValueError as e:
            return dict(result, failed=True, msg=str(e))
        return dict(result, changed=False, job=prometheus.job_name(topo.pipeline.name),
                    scheme="https" if the_plan["tls"] else "http",
                    targets=prometheus.scrape_targets(the_plan), constants=constants)
