"""Fixtures of the integration tests: fleets of SSH hosts (see fleet.py)."""

import os

import pytest
from fleet import Fleet


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
