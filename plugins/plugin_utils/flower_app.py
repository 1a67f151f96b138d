# Copyright: hfl.orchestration developers
# Apache License 2.0
"""A Flower app folder on the controller (``hfl_flower_app``): where it is, what it holds, its
digest and archive, and whether the components the inventory names import.

Pure Python (no Ansible imports); the ``fl_plan`` action plugin calls it before it plans.

    path = resolve(topo.pipeline.flower_app, inventory_dir)
    app = load(path, "host ga")              # App, or TopologyError: one line per mistake
    errors = check_run_config(run_config, app, "host ga")
    errors = import_check(components(topo.pipeline, app), app.dir, python, "host ga")

The folder is shipped as it is (no pip install): every file except caches and VCS folders
(``files``), hashed into ``App.digest`` so that a changed file restarts the services that run
it and an unchanged folder changes nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass, field

from ansible_collections.hfl.orchestration.plugins.plugin_utils.topology import TopologyError

# Never shipped nor hashed: caches, VCS and virtualenv folders, byte code.
SKIP_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".venv", "venv", ".tox",
                       ".mypy_cache", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints"})
SKIP_SUFFIXES = (".pyc", ".pyo")
CHECK_TIMEOUT_S = 300


@dataclass(frozen=True)
class App:
    dir: str  # absolute path on the controller
    digest: str  # sha256 over every shipped file's path and bytes
    files: tuple  # shipped files, relative, sorted
    config: dict = field(default_factory=dict)  # [tool.flwr.app.config], flattened (dotted)
    clientapp: str = ""  # [tool.flwr.app.components].clientapp
    serverapp: str = ""  # [tool.flwr.app.components].serverapp (not run by fl_service)


def resolve(path, base_dir):
    """``path`` as an absolute, normalized path: ``~`` is the controller user's home; a relative
    path is relative to ``base_dir`` (the inventory's folder)."""
    path = os.path.expanduser(str(path))
    if not os.path.isabs(path):
        path = os.path.join(str(base_dir), path)
    return os.path.normpath(path)


def files(folder):
    """Every file the app ships, relative to ``folder``, sorted (symlinks are followed)."""
    out = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in names:
            if name.endswith(SKIP_SUFFIXES):
                continue
            full = os.path.join(root, name)
            if os.path.isfile(full):
                out.append(os.path.relpath(full, folder))
    return tuple(sorted(out))


def digest(folder, names):
    """sha256 over (path, size, bytes) of each file: a rename, an edit or a new file changes it,
    mtimes do not."""
    h = hashlib.sha256()
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _flatten(table, prefix=""):
    out = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load(path, who, var="hfl_flower_app"):
    """The App at ``path`` (absolute); TopologyError naming ``var`` when it is not a Flower app
    folder. ``who`` starts each error line (e.g. ``host ga``)."""
    if not os.path.isdir(path):
        raise TopologyError([f"{who}: {var}: {path!r} is not a folder on the controller"])
    pyproject = os.path.join(path, "pyproject.toml")
    try:
        with open(pyproject, "rb") as f:
            meta = tomllib.load(f)
    except FileNotFoundError:
        raise TopologyError([f"{who}: {var}: {path!r} has no pyproject.toml (a Flower app "
                             f"folder holds one with a [tool.flwr.app] table)"]) from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise TopologyError([f"{who}: {var}: {pyproject}: {e}"]) from None
    app = meta.get("tool", {}).get("flwr", {}).get("app")
    if not isinstance(app, dict):
        raise TopologyError([f"{who}: {var}: {pyproject} has no [tool.flwr.app] table"])
    components = app.get("components", {}) if isinstance(app.get("components"), dict) else {}
    config = app.get("config", {}) if isinstance(app.get("config"), dict) else {}
    names = files(path)
    return App(dir=path, digest=digest(path, names), files=names, config=_flatten(config),
               clientapp=str(components.get("clientapp") or ""),
               serverapp=str(components.get("serverapp") or ""))


def check_run_config(run_config, app, who, var="hfl_run_config"):
    """Flower fuses overrides only over keys the app's [tool.flwr.app.config] has (and raises
    on others at run time): each unknown key is one line here, at plan time."""
    if app is None:
        return []
    known = ", ".join(sorted(app.config)) or "none"
    return [f"{who}: {var}: {key!r} is not a key of [tool.flwr.app.config] in "
            f"{app.dir}/pyproject.toml (keys: {known})"
            for key in sorted(run_config) if key not in app.config]


def archive_bytes(app):
    """The shipped files as a .tar.gz, the same bytes for the same digest (sorted names, no
    owners, mtimes or gzip timestamp; mode 0644, 0755 for executables)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in app.files:
            full = os.path.join(app.dir, name)
            with open(full, "rb") as f:
                data = f.read()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if os.access(full, os.X_OK) else 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_archive(app, folder):
    """Write ``<folder>/<digest[:16]>.tar.gz`` unless it is there, and remove older ones;
    returns its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{app.digest[:16]}.tar.gz")
    if not os.path.exists(path):
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(archive_bytes(app))
        os.replace(tmp, path)
    for name in os.listdir(folder):
        if name.endswith(".tar.gz") and os.path.join(folder, name) != path:
            os.remove(os.path.join(folder, name))
    return path


def components(pipeline, app):
    """What the import check tries, one entry per inventory variable that names a component:
    {var, path, kind (app_folder | client_app | callable | strategy), kwargs}."""
    checks = []
    if app is not None:  # its pyproject.toml as flwr (and so fl_service) reads it
        checks.append({"var": "hfl_flower_app", "path": app.dir, "kind": "app_folder"})
    client_app = pipeline.client_app or (app.clientapp if app else "")
    if client_app:
        var = "hfl_client_app" if pipeline.client_app else "hfl_flower_app"
        checks.append({"var": var, "path": client_app, "kind": "client_app"})
    for var, path in (("hfl_model", pipeline.model), ("hfl_evaluate_fn", pipeline.evaluate_fn)):
        if path:
            checks.append({"var": var, "path": path, "kind": "callable"})
    for var, spec in (("hfl_ga_strategy", pipeline.ga_strategy),
                      ("hfl_la_strategy", pipeline.la_strategy)):
        if spec:
            checks.append({"var": var, "path": spec["class"], "kind": "strategy",
                           "kwargs": spec.get("kwargs") or {}})
    return checks


# Runs in a fresh interpreter with the app folder first on sys.path: validates the folder's
# pyproject.toml as flwr does, imports each component, checks its kind against flwr 1.42's
# Message API (a ClientApp; a Strategy subclass), builds each strategy with its kwargs. Writes
# {"errors": [[var, text]]} to the file named by argv[2]; the user's code may print at will.
_CHECKER = r"""
import importlib, json, sys
app_dir, out, checks = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if app_dir:
    sys.path.insert(0, app_dir)
try:
    import flwr
except ImportError as e:
    with open(out, "w") as f:
        json.dump({"skipped": f"{sys.executable} cannot import flwr ({e})"}, f)
    sys.exit(0)
errors = []

def load(path):
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj

def why(e):
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}"[:400]

for c in checks:
    try:
        if c["kind"] == "app_folder":
            from flwr.common.config import get_project_config
            get_project_config(c["path"])
            continue
        obj = load(c["path"])
        if c["kind"] == "client_app":
            want = load("flwr.clientapp:ClientApp")
            if not isinstance(obj, want):
                raise TypeError(f"is a {type(obj).__name__}, not a flwr ClientApp")
        elif c["kind"] == "strategy":
            want = load("flwr.serverapp.strategy:Strategy")
            if not (isinstance(obj, type) and issubclass(obj, want)):
                raise TypeError(f"{obj!r} is not a subclass of flwr.serverapp.strategy.Strategy")
            obj(**c["kwargs"])
        elif not callable(obj):
            raise TypeError(f"{type(obj).__name__} object is not callable")
    except BaseException as e:  # a component's import may even call sys.exit
        errors.append([c["var"], f"{c['path']!r}: " + why(e)])
with open(out, "w") as f:
    json.dump({"errors": errors}, f)
"""


def check_key(checks, app, python):
    """What a passed import check depends on: the same key needs no new check."""
    body = json.dumps([checks, app.digest if app else "", python], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def import_check(checks, app_dir, python, who, timeout=CHECK_TIMEOUT_S):
    """Import every component of ``checks`` with ``python`` in a subprocess, the app folder
    first on sys.path. Returns (errors, skipped): one error line per component that fails,
    naming its inventory variable; ``skipped`` says why nothing was checked (``python`` has no
    flwr), else ""."""
    if not checks:
        return [], ""
    with tempfile.TemporaryDirectory(prefix="hfl-app-check-") as tmp:
        out = os.path.join(tmp, "result.json")
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")  # leave the user's folder clean
        try:
            proc = subprocess.run(
                [python, "-c", _CHECKER, app_dir or "", out, json.dumps(checks)],
                cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return [f"{who}: {checks[0]['var']}: importing the app's components took more "
                    f"than {timeout} s"], ""
        except OSError as e:
            return [f"{who}: {checks[0]['var']}: cannot run {python} to check the imports: "
                    f"{e}"], ""
        try:
            with open(out) as f:
                result = json.load(f)
        except (OSError, ValueError):
            tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
            return [f"{who}: {checks[0]['var']}: the import check exited with status "
                    f"{proc.returncode}: {tail[0][:400]}"], ""
    if "skipped" in result:
        return [], result["skipped"]
    return [f"{who}: {var}: {text}" for var, text in result["errors"]], ""
