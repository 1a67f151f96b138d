"""Role fl_runtime installs fl_service into a missing venv, and only then. Dependencies are left
out (--no-deps): what is checked is the role's install path, not a torch download."""

import subprocess

import pytest
from hfl_helpers import ROOT, PlaybookRun, ansible_env, run_group

pytestmark = pytest.mark.integration

PLAY = """
- name: Install fl_service
  hosts: localhost
  gather_facts: false
  roles:
    - role: hfl.orchestration.fl_runtime
      vars:
        hfl_venv: {venv}
        hfl_pip_extra_args: --no-deps
"""


def run(play):
    return run_group(
        [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", "ansible_python_interpreter=" + str(ROOT / ".venv" / "bin" / "python"),
         str(play)], cwd=ROOT, env=ansible_env(), capture_output=True, text=True, timeout=600)


def test_installs_into_a_missing_venv_once(tmp_path):
    venv = tmp_path / "venv"
    play = tmp_path / "play.yml"
    play.write_text(PLAY.format(venv=venv))
    first = run(play)
    assert first.returncode == 0, PlaybookRun(first).why()
    assert "changed=0" not in first.stdout
    probe = subprocess.run([venv / "bin" / "python", "-c", "import fl_service, sys; "
                            "print(fl_service.__file__)"], capture_output=True, text=True, cwd="/")
    assert probe.returncode == 0 and str(venv) in probe.stdout
    second = run(play)
    assert second.returncode == 0 and "changed=0" in second.stdout, PlaybookRun(second).why()
