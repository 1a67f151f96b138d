"""Shared test setup: import the collection as Ansible does, and keep torch on one thread."""

import os
import sys
from pathlib import Path

# Some tests load Ansible (its inventory reader), which replaces sys.intern with a patch object;
# torch's compiler later refuses to register its stand-in for a non-function, and every
# optimizer step fails. Registering it first, against the real sys.intern, lets both live in
# one pytest process, as they never need to elsewhere.
import torch._dynamo  # noqa: F401, E402

ROOT = Path(__file__).resolve().parents[1]
# scripts/setup.sh links the checkout in as ansible_collections/hfl/orchestration here.
sys.path.insert(0, str(ROOT / ".tmp" / "collections"))
# The machine is shared: every process a test starts inherits one torch/BLAS thread.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")
os.environ["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"
