from collections.abc import Iterator
from pathlib import Path

import pytest
from fl_procs import Pipeline


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    """Real fl_service processes; every one is killed at teardown, pass or fail."""
    running = Pipeline(tmp_path)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def tls_pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    """`pipeline` with mutual TLS on every link (a throwaway CA of its own)."""
    running = Pipeline(tmp_path, tls=True)
    try:
        yield running
    finally:
        running.close()
