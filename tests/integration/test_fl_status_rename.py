"""fl_status is now fl_status_info: a playbook using the old name still runs, with a deprecation
warning naming the new one, and module_defaults for the action group reach both names."""

import json
import subprocess
import sys

import yaml
from hfl_helpers import ROOT, ansible_env, free_ports


def test_old_name_still_reads_warns_and_takes_group_defaults(tmp_path):
    (port,) = free_ports(1)  # nothing listens there: the read reports it unreachable
    services = [{"name": "ga", "url": f"http://127.0.0.1:{port}/status"}]
    play = [{
        "name": "Read through both names",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "module_defaults": {"group/hfl.orchestration.hfl": {"timeout": 0.5}},
        "tasks": [
            {"name": "Old name", "hfl.orchestration.fl_status": {"services": services}},
            {"name": "New name", "hfl.orchestration.fl_status_info": {"services": services}},
        ],
    }]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    proc = subprocess.run([str(ROOT / ".venv/bin/ansible-playbook"), "-i", "localhost,",
                           "-e", f"ansible_python_interpreter={sys.executable}",
                           str(tmp_path / "play.yml")], cwd=ROOT, text=True,
                          env={**ansible_env(), "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"},
                          capture_output=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    # The warning goes to stderr (the json callback writes the results to stdout).
    assert "hfl.orchestration.fl_status has been deprecated" in proc.stderr
    assert "Use hfl.orchestration.fl_status_info" in proc.stderr
    tasks = {t["task"]["name"]: t["hosts"]["localhost"]
             for t in json.loads(proc.stdout)["plays"][0]["tasks"]}
    for name in ("Old name", "New name"):
        assert tasks[name]["statuses"]["ga"]["reachable"] is False, name
        assert tasks[name]["invocation"]["module_args"]["timeout"] == 0.5, name
