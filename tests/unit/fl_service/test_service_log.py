"""--log-file: the service's log and its stdout/stderr go to one size-rotated file set."""

import subprocess
import sys
import textwrap
from pathlib import Path

# A process that logs and writes to stderr as a service does, with a small rotation size.
WRITER = textwrap.dedent("""
    import logging, sys
    from fl_service import __main__ as main
    main.LOG_MAX_BYTES = 4000
    logging.basicConfig(level="INFO", handlers=[main.RotatingOutput(sys.argv[1])])
    for i in range(400):
        logging.getLogger("fl_service").info("line %04d %s", i, "x" * 40)
        if i % 50 == 0:
            print(f"stderr {i:04d}", file=sys.stderr, flush=True)
    print("stderr last", file=sys.stderr, flush=True)
""")


def test_the_log_rotates_by_size_and_stderr_follows_it(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    done = subprocess.run([sys.executable, "-c", WRITER, str(log)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == done.stderr == ""  # everything went to the log
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["service.log", "service.log.1", "service.log.2", "service.log.3"]
    # A stderr line lands unmeasured after the record that checked the size.
    assert all((tmp_path / f).stat().st_size <= 4000 + len("stderr 0000\n") for f in files)
    current = log.read_text()
    assert "line 0399" in current and current.rstrip().endswith("stderr last")
    older = (tmp_path / "service.log.1").read_text() + (tmp_path / "service.log.2").read_text()
    assert "stderr 0350" in older + current
