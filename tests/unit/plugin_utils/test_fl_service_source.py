"""plugin_utils.fl_service_source: what role fl_runtime ships and the stamp a host keeps. The
sha256 follows the package's code and what pip installs, and nothing else."""

import pytest
from ansible_collections.hfl.orchestration.plugins.plugin_utils import fl_service_source as src

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]

[project]
name = "fl_service"
version = "0.1.0"
dependencies = ["flwr==1.42.0", "torch"]

[tool.ruff]
line-length = 100
"""


@pytest.fixture
def root(tmp_path):
    (tmp_path / "fl_service" / "roles" / "__pycache__").mkdir(parents=True)
    (tmp_path / "fl_service" / "__init__.py").write_text('"""fl."""\n')
    (tmp_path / "fl_service" / "roles" / "client.py").write_text("X = 1\n")
    (tmp_path / "fl_service" / "roles" / "__pycache__" / "client.cpython-311.pyc").write_bytes(b"")
    (tmp_path / "fl_service" / "stale.pyc").write_bytes(b"")
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "README.md").write_text("not shipped\n")
    return tmp_path


def stamp(root):
    return src.shipped_source(str(root))["stamp"]


def test_ships_the_package_and_pyproject_without_bytecode(root):
    shipped = src.shipped_source(str(root))
    assert shipped["files"] == ["fl_service/__init__.py", "fl_service/roles/client.py",
                                "pyproject.toml"]
    assert shipped["stamp"]["version"] == "0.1.0"
    assert shipped["stamp"]["dependencies"] == ["flwr==1.42.0", "torch"]
    assert shipped["stamp"] == stamp(root)  # the same source, the same stamp


@pytest.mark.parametrize("change", [
    lambda r: (r / "fl_service" / "roles" / "client.py").write_text("X = 2\n"),
    lambda r: (r / "fl_service" / "roles" / "server.py").write_text(""),
    lambda r: (r / "fl_service" / "roles" / "client.py").rename(r / "fl_service" / "client.py"),
    lambda r: (r / "pyproject.toml").write_text(PYPROJECT.replace("0.1.0", "0.1.1")),
    lambda r: (r / "pyproject.toml").write_text(PYPROJECT.replace(', "torch"', "")),
], ids=["code", "new module", "moved module", "version", "dependencies"])
def test_the_sha256_follows_the_code_and_what_pip_installs(root, change):
    before = stamp(root)
    change(root)
    assert stamp(root)["sha256"] != before["sha256"]


@pytest.mark.parametrize("change", [
    lambda r: (r / "pyproject.toml").write_text(PYPROJECT.replace("100", "99")),
    lambda r: (r / "fl_service" / "roles" / "__pycache__" / "x.pyc").write_bytes(b"x"),
    lambda r: (r / "README.md").write_text("changed\n"),
], ids=["lint setting", "bytecode", "file outside the package"])
def test_what_does_not_change_the_installed_package_changes_nothing(root, change):
    before = stamp(root)
    change(root)
    assert stamp(root) == before


def test_a_source_that_cannot_be_shipped_is_a_one_line_error(root):
    (root / "pyproject.toml").write_text(PYPROJECT.replace('version = "0.1.0"\n', ""))
    with pytest.raises(src.SourceError, match=r"pyproject.toml: \[project\] has no version$"):
        stamp(root)
    with pytest.raises(src.SourceError, match="no fl_service/ and pyproject.toml to ship$"):
        src.shipped_source(str(root / "fl_service"))
