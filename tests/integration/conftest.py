"""Fixtures of the integration tests: fleets of SSH hosts (see fleet.py), a folder for a
test's Prometheus."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from fleet import Fleet
from hfl_helpers import stop_processes_under


@pytest.fixture
def fleet_factory(tmp_path):
    """fleet_factory(names) -> a running Fleet, removed after the test whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("network-namespace hosts need root")
    fleets = []

    def make(names):
        f = Fleet(len(names), tmp_path / f"fleet{len(fleets)}", names=names)
        fleets.append(f)
        return f.__enter__()

    yield make
    for f in fleets:
        f.remove()


@pytest.fixture
def prometheus_dir():
    """hfl_prometheus_dir for a test: a folder the prometheus user can reach (pytest's tmp
    folders are root's alone); whatever runs from it is stopped afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="hfl-prometheus-"))
    folder.chmod(0o755)
    yield folder
    stop_processes_under(folder)
    shutil.rmtree(folder, ignore_errors=True)
