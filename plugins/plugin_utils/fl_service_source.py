# Copyright: hfl.orchestration developers
# Apache License 2.0
"""The fl_service source the collection ships to the process runtime's hosts (role fl_runtime):
which files it packs, and the stamp a host keeps of the source installed in its venv.

The stamp is the fl_service version, the sha256 of that source and the dependencies pyproject
names. A host whose stamp differs gets the source reinstalled (with its dependencies only when
they changed), and every service restarts on a new sha256 (fl_process's ``revision``). Only what
changes the installed package counts: the package's files and pyproject.toml's build-system,
project and tool.setuptools tables, so a lint or test setting there upgrades nothing.
Controller-side; standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib

PACKAGE = "fl_service"
PYPROJECT = "pyproject.toml"


class SourceError(Exception):
    """A one-line reason the source cannot be shipped (missing, or no version)."""


def source_files(root):
    """pyproject.toml and every file of the package under ``root`` but bytecode, as sorted
    paths relative to ``root`` (what the archive holds)."""
    package = os.path.join(root, PACKAGE)
    if not os.path.isdir(package) or not os.path.isfile(os.path.join(root, PYPROJECT)):
        raise SourceError(f"{root}: no {PACKAGE}/ and {PYPROJECT} to ship")
    files = [PYPROJECT]
    for folder, dirs, names in os.walk(package):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        files += [os.path.relpath(os.path.join(folder, n), root) for n in names
                  if not n.endswith((".pyc", ".pyo"))]
    return sorted(files)


def install_metadata(pyproject_text):
    """The tables of pyproject.toml that decide what pip installs."""
    doc = tomllib.loads(pyproject_text)
    return {"build-system": doc.get("build-system", {}), "project": doc.get("project", {}),
            "tool.setuptools": doc.get("tool", {}).get("setuptools", {})}


def source_stamp(root, files):
    """{version, sha256, dependencies} of the source ``files`` (source_files) under ``root``."""
    with open(os.path.join(root, PYPROJECT), "rb") as f:
        metadata = install_metadata(f.read().decode())
    project = metadata["project"]
    if not project.get("version"):
        raise SourceError(f"{os.path.join(root, PYPROJECT)}: [project] has no version")
    digest = hashlib.sha256()
    for rel in files:
        if rel == PYPROJECT:
            data = json.dumps(metadata, sort_keys=True).encode()
        else:
            with open(os.path.join(root, rel), "rb") as f:
                data = f.read()
        # Name and length first: moving bytes between files changes the digest.
        digest.update(f"{rel}\0{len(data)}\0".encode() + data)
    return {"version": str(project["version"]), "sha256": digest.hexdigest(),
            "dependencies": list(project.get("dependencies", []))}


def shipped_source(root):
    """What role fl_runtime ships from ``root`` (the collection's folder): {root, files, stamp}."""
    files = source_files(root)
    return {"root": root, "files": files, "stamp": source_stamp(root, files)}
