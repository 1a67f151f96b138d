"""The controller validates inventories without importing fl_service (it need not be installed
there), so the topology keeps its own copy of the names; they must be the services' names."""

from ansible_collections.hfl.orchestration.plugins.module_utils import fl_process
from ansible_collections.hfl.orchestration.plugins.plugin_utils import topology

from fl_service import choices


def test_topology_accepts_exactly_the_datasets_and_partitioners_fl_service_knows():
    assert set(topology.DATASETS) == set(choices.DATASETS)
    assert set(topology.PARTITIONERS) == set(choices.PARTITIONERS)


def test_topology_accepts_exactly_the_supervisors_fl_process_knows():
    assert topology.SUPERVISORS == fl_process.SUPERVISORS
