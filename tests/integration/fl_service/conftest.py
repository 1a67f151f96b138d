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
