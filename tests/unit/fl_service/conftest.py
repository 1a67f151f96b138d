"""Fixtures of fl_service's unit tests: a throwaway pipeline CA (bench/throwaway_pki.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from throwaway_pki import ThrowawayCA  # noqa: E402


@pytest.fixture
def ca(tmp_path: Path) -> ThrowawayCA:
    """A CA of its own for this test; `ca.issue(name, role)` gives a service's TLS config."""
    return ThrowawayCA(tmp_path / "pki")
