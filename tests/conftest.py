"""Shared test setup: import the collection as Ansible does, and keep torch on one thread."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# scripts/setup.sh links the checkout in as ansible_collections/hfl/orchestration here.
sys.path.insert(0, str(ROOT / ".tmp" / "collections"))
# The machine is shared: every process a test starts inherits one torch/BLAS thread.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")
os.environ["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"
