"""The k3s install script runs as root, so only the bytes whose sha256 the inventory pins may
run: role k3s_server's install entry point (k3s_agent's too) stops before downloading while no
checksum is set, and at the download when the script served differs from the pinned one, each
time with one message naming the variable or both checksums, and leaves no script behind.

No k3s can run here (shared/notes/this-machine.md §4): a local HTTP server stands in for
GitHub, serving a script that is never run."""

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import yaml
from hfl_helpers import playbook

pytestmark = pytest.mark.integration
SCRIPT = Path("/usr/local/bin/k3s-install.sh")
SERVED = b"#!/bin/sh\necho 'stand-in, never run' >&2; exit 1\n"


@pytest.fixture
def script_server(tmp_path):
    """A URL serving the stand-in script, and the paths requested from it."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "install.sh").write_bytes(SERVED)
    requested = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):
            requested.append(self.path)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/install.sh", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def install(tmp_path, url, sha256):
    """The install entry point alone, on this machine, pinned to ``sha256``."""
    node = {"ansible_connection": "local",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}"}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump({"all": {"hosts": {"node": node}}}))
    (tmp_path / "install.yml").write_text(yaml.safe_dump([{
        "name": "Install k3s", "hosts": "node", "gather_facts": False,
        "tasks": [{"name": "Install", "ansible.builtin.include_role": {
            "name": "hfl.orchestration.k3s_server", "tasks_from": "install"},
            "vars": {"hfl_k3s_exec": "server", "hfl_k3s_restart_handler": "Restart k3s",
                     "hfl_k3s_install_script_url": url,
                     "hfl_k3s_install_script_sha256": sha256}}]}]))
    return playbook(str(tmp_path / "install.yml"), tmp_path / "inventory.yml", timeout=300)


@pytest.fixture
def no_k3s_script():
    if SCRIPT.exists():
        pytest.skip(f"{SCRIPT} exists on this machine: the test would replace it")
    yield
    assert not SCRIPT.exists(), "the unverified script was installed"


def test_hfl_k3s_script_with_another_checksum_is_not_installed(tmp_path, script_server,
                                                               no_k3s_script):
    url, requested = script_server
    pinned = hashlib.sha256(b"the script someone reviewed").hexdigest()
    run = install(tmp_path, url, pinned)
    assert run.rc != 0
    assert run.failure.startswith("hfl.orchestration.k3s_server : Download the official install "
                                  "script on node")
    assert pinned in run.failure and hashlib.sha256(SERVED).hexdigest() in run.failure
    assert requested == ["/install.sh"]


def test_hfl_k3s_script_without_a_pinned_checksum_is_not_downloaded(tmp_path, script_server,
                                                                    no_k3s_script):
    url, requested = script_server
    run = install(tmp_path, url, "")
    assert run.rc != 0
    assert run.failure.startswith("hfl.orchestration.k3s_server : Check that the install "
                                  "script's checksum is pinned on node")
    assert "hfl_k3s_install_script_sha256 must be the sha256 of " + url in run.failure
    assert requested == []
