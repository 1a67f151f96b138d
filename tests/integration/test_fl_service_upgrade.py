"""A controller upgrade on the process runtime: place.yml from a copy of the collection installs
fl_service into each host's own venv and starts the services; a new fl_service version in that
copy (the controller upgraded) is reported by check mode without a change, then reinstalled on
every host, restarting the services that run it; a change that is not fl_service's code (a lint
setting in pyproject.toml) reinstalls and restarts nothing.

Each host gets a fresh venv that sees the project venv's packages through a .pth file (torch and
the rest are found there, fl_service is not: an editable install's finder is not loaded from a
path a .pth adds), so what runs is the fl_service this role installed."""

import json
import shutil
import subprocess
import sys
import sysconfig

import pytest
from hfl_helpers import (
    ROOT,
    PlaybookRun,
    ansible_env,
    local_inventory,
    run_group,
    service_pids,
    stop_processes_under,
)

pytestmark = pytest.mark.integration
HOSTS = ("ga", "c1")
SHIPPED = ("plugins", "roles", "playbooks", "meta", "fl_service", "galaxy.yml", "pyproject.toml")
STAMP = ".fl_service-source.json"


def copy_collection(dest):
    """The controller's collection as it would be installed: a folder of its own."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__")
    for name in SHIPPED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def host_venv(path):
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    site = next(path.glob("lib/python*/site-packages"))
    (site / "project_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return path


def installed(venv):
    """(version pip recorded, folder fl_service imports from) in ``venv``."""
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import fl_service, importlib.metadata as m; "
         "print(m.version('fl_service')); print(fl_service.__file__)"],
        capture_output=True, text=True, cwd="/", check=True)
    version, location = probe.stdout.split()
    return version, location


@pytest.fixture
def upgradable(tmp_path):
    collection = copy_collection(tmp_path / "collections" / "ansible_collections" / "hfl"
                                 / "orchestration")
    venvs = {h: host_venv(tmp_path / "venvs" / h) for h in HOSTS}

    def edit(tiers, cluster_vars):
        # A GA and one client that it waits for a second one: the services idle between runs.
        tiers.pop("fog")
        tiers["edge"] = {"c1": {**tiers["edge"]["c1"], "hfl_link_cost": {"ga": 1}}}
        for tier in tiers.values():
            for host in tier:
                tier[host]["hfl_venv"] = str(venvs[host])
        cluster_vars.update(hfl_insecure=True, hfl_min_participants=2, hfl_global_rounds=2)

    inventory = local_inventory(tmp_path, edit)
    env = {**ansible_env(), "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "collections")}

    def place(playbook="place.yml", *options):
        argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory),
                str(collection / "playbooks" / playbook), *options]
        return PlaybookRun(run_group(argv, cwd=ROOT, env=env, text=True, timeout=600,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT))

    yield collection, venvs, place
    place("reset.yml")
    stop_processes_under(tmp_path)


def test_an_upgraded_controller_upgrades_the_hosts_and_restarts_only_on_new_code(upgradable):
    collection, venvs, place = upgradable
    pyproject = collection / "pyproject.toml"
    first = place()
    assert first.rc == 0, first.why()
    for venv in venvs.values():
        assert json.loads((venv / STAMP).read_text())["version"] == "0.1.0"
        version, location = installed(venv)
        assert version == "0.1.0" and location.startswith(str(venv)), location
    hosts = collection.parents[3] / "hosts"
    before = service_pids(hosts)
    assert set(before) == set(HOSTS)

    pyproject.write_text(pyproject.read_text().replace('version = "0.1.0"', 'version = "0.1.1"'))
    # Check mode says what would change and changes nothing on the hosts.
    check = place("place.yml", "--check")
    assert check.rc == 0 and check.changed > 0, check.why()
    assert all(installed(venv)[0] == "0.1.0" for venv in venvs.values())
    assert service_pids(hosts) == before
    upgrade = place()
    assert upgrade.rc == 0, upgrade.why()
    for venv in venvs.values():
        assert json.loads((venv / STAMP).read_text())["version"] == "0.1.1"
        assert installed(venv)[0] == "0.1.1"
    upgraded = service_pids(hosts)
    assert set(upgraded) == set(HOSTS)
    assert all(upgraded[s] != before[s] for s in HOSTS), (before, upgraded)

    # Not fl_service's code: nothing is reinstalled, nothing restarts, nothing changes.
    pyproject.write_text(pyproject.read_text().replace("line-length = 100", "line-length = 99"))
    again = place()
    assert again.rc == 0, again.why()
    assert again.changed == 0, again.why()
    assert service_pids(hosts) == upgraded
