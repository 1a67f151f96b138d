"""site.yml with hfl_runtime: podman: 1 GA, 2 LAs, 4 clients on digits as pods played from the
same manifests k3s applies, with mutual TLS (the default). It trains to accuracy >= 0.90, a
second run changes nothing and restarts no container, a GA pod that dies resumes from its
checkpoint volume when placed again, and reset.yml leaves no pod, container, volume, secret or
network behind. Every service runs as user 10001 with no capabilities, no privilege escalation
and a seccomp filter; clients publish no port; no private key shows in the output or the
manifests kept on the controller.

The image: the fleet image (Containerfile) needs a registry and a package index, which CI does
not have. So the pods run a bare base image (a root of symlinks into /usr, imported in 0.1 s)
and mount this machine's /usr, base Python and checkout read-only (hfl_image_host_paths), which
the manifests render as hostPath volumes. podman runs from a private store and config under
the test's tmp folder (scripts/podman-env.sh), removed at the end whatever happens."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import yaml
from ansible_collections.hfl.orchestration.plugins.plugin_utils import manifests
from hfl_helpers import ROOT, call, local_inventory, pki_context, playbook

pytestmark = [pytest.mark.integration, pytest.mark.podman]

IMAGE = "localhost/hfl/hostroot:test"
BASE_DIRS = ("usr", "etc", "tmp", "proc", "sys", "dev", "run", "var/tmp", "var/lib/hfl")
USR_LINKS = ("bin", "lib", "lib64", "sbin")


def podman_env(folder):
    out = subprocess.run([str(ROOT / "scripts/podman-env.sh"), str(folder)], check=True,
                         capture_output=True, text=True).stdout
    return dict(pair.split("=", 1) for pair in out.split()[1:])


def podman(env, *args, check=True):
    return subprocess.run(["podman", *args], env=env, check=check, capture_output=True,
                          text=True).stdout


def import_base_image(env):
    """An image whose root only points into /usr; the pods mount the host's /usr over it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in BASE_DIRS:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if "tmp" in d else 0o755
            tar.addfile(info)
        for link in USR_LINKS:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, f"usr/{link}"
            tar.addfile(info)
    subprocess.run(["podman", "import", "-c", "ENV PATH=/usr/local/bin:/usr/bin:/bin", "-",
                    IMAGE], input=buf.getvalue(), env=env, check=True, capture_output=True)


def host_paths():
    paths = ["/usr", str(ROOT)]
    if not sys.base_prefix.startswith("/usr"):
        paths.append(sys.base_prefix)  # the venv's base interpreter, e.g. under ~/.pyenv
    return paths


def status(port, pki):
    """A service's /status over mutual TLS, as the controller reads it (its certificate)."""
    code, doc = call(f"https://127.0.0.1:{port}/status", pki_context(pki))
    assert code == 200, (port, code, doc)
    return doc


def credentials(pki, plan):
    """role fl_pki's files as placement reads them for manifests.render."""
    names = [s["name"] for s in plan["services"]]
    return {"ca": (pki / "ca.crt").read_text(),
            "certs": {n: (pki / "services" / f"{n}.crt").read_text() for n in names},
            "keys": {n: (pki / "services" / f"{n}.key").read_text() for n in names}}


def process_status(env, container):
    """Uid, CapEff, NoNewPrivs and Seccomp of the container's main process, read on the host."""
    pid = podman(env, "inspect", "--format", "{{.State.Pid}}", container).strip()
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines())
    return {k: fields[k].split() for k in ("Uid", "CapEff", "NoNewPrivs", "Seccomp")}


def started_at(env):
    ids = podman(env, "ps", "-q", "--filter", "label=app.kubernetes.io/managed-by="
                 "hfl.orchestration").split()
    return {line for line in podman(env, "inspect", "--format",
                                    "{{.Name}} {{.State.StartedAt}}", *ids).splitlines()}


def assert_nothing_left(env, pipeline):
    """No container, pod, volume or secret in the store, and not the pipeline's network."""
    assert podman(env, "ps", "--all", "--quiet") == ""
    assert podman(env, "pod", "ps", "--quiet") == ""
    assert podman(env, "volume", "ls", "--quiet") == ""
    assert podman(env, "secret", "ls", "--quiet") == ""
    assert f"hfl-{pipeline}" not in podman(env, "network", "ls", "--format", "{{.Name}}")


@pytest.fixture
def podman_store(tmp_path):
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    env = {**os.environ, **podman_env(tmp_path / "podman")}
    try:
        yield env
    finally:
        # Everything lives in this private store; remove all of it, also after a failure.
        podman(env, "pod", "rm", "--force", "--all", check=False)
        podman(env, "system", "reset", "--force", check=False)
        shutil.rmtree(tmp_path / "podman", ignore_errors=True)


def test_hfl_podman_runtime_trains_is_idempotent_and_resets_clean(podman_store, tmp_path,
                                                                  record_property):
    env = podman_store
    import_base_image(env)
    pipeline = f"pm{uuid.uuid4().hex[:6]}"

    def edit(tiers, cluster_vars):
        cluster_vars.update(hfl_runtime="podman", hfl_pipeline=pipeline, hfl_global_rounds=6,
                            hfl_min_participants=2, hfl_image=IMAGE,
                            hfl_image_python=str(ROOT / ".venv/bin/python"),
                            hfl_image_host_paths=host_paths(),
                            hfl_podman_dir=str(tmp_path / "units"))

    inventory = local_inventory(tmp_path, edit)
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())["hfl_cluster"]["children"]
    ports = {h: v["hfl_port"] for tier in hosts.values() for h, v in tier["hosts"].items()}
    pipeline_dir = tmp_path / "controller" / pipeline
    pki = pipeline_dir / "pki"

    t0 = time.monotonic()
    first = playbook("site.yml", inventory, env=env)
    t1 = time.monotonic()
    assert first.rc == 0, first.why()
    ga = status(ports["ga"], pki)
    assert ga["state"] == "finished" and ga["global_round"] == 6
    assert ga["last_metrics"]["accuracy"] >= 0.90
    # Children found their parents by Service name on the pipeline's network, over mutual TLS.
    assert sorted(ga["children"]) == ["la1", "la2"]
    assert sorted(status(ports["la1"], pki)["children"]) == ["c1", "c2"]

    # Hardened pods: the image's user, no capabilities, no privilege escalation, a seccomp
    # filter; only aggregators publish a port on the host.
    for name in ports:
        assert process_status(env, f"{name}-pod-0-fl-service") == {
            "Uid": ["10001"] * 4, "CapEff": ["0000000000000000"], "NoNewPrivs": ["1"],
            "Seccomp": ["2"]}, name
        published = json.loads(podman(env, "pod", "inspect", "--format",
                                      "{{json .InfraConfig.PortBindings}}", f"{name}-pod-0"))
        assert bool(published) == (not name.startswith("c")), (name, published)
    results = [json.loads(x) for x in (pipeline_dir / "results/ga.jsonl").read_text().split("\n")
               if x]
    assert results[-1]["accuracy"] >= 0.90
    assert {p.stem for p in (pipeline_dir / "results").glob("*.jsonl")} == set(ports)

    # One rendering: manifests.yaml is the plan rendered once, and every document podman
    # played is one of its documents, byte for byte (what k3s applies is that same text).
    plan = json.loads((pipeline_dir / "plan.json").read_text())
    rendered = (pipeline_dir / "manifests.yaml").read_text()
    creds = credentials(pki, plan)
    assert rendered == manifests.render(plan, image=IMAGE, python=str(ROOT / ".venv/bin/python"),
                                        host_paths=host_paths(), tls=creds)
    for key in creds["keys"].values():
        assert key.splitlines()[1] not in rendered + first.output
    documents = {raw for raw, _ in manifests.documents(rendered)}
    units = sorted((tmp_path / "units" / pipeline).glob("*.yaml"))
    assert [u.stem for u in units] == sorted(ports)
    for unit in units:
        assert {raw for raw, _ in manifests.documents(unit.read_text())} <= documents, unit.name

    before = started_at(env)
    assert len(before) == 7
    t2 = time.monotonic()
    second = playbook("site.yml", inventory, env=env)
    t3 = time.monotonic()
    assert second.rc == 0, second.why()
    assert second.changed == 0, second.why()
    assert started_at(env) == before

    # The GA's pod dies: the next placement plays it again, and from the claim's volume it
    # resumes at its last checkpoint (round 6, finished) instead of starting over at round 0.
    podman(env, "pod", "rm", "--force", "ga-pod-0")
    replace = playbook("place.yml", inventory, env=env)
    assert replace.rc == 0, replace.why()
    resumed = status(ports["ga"], pki)
    assert resumed["global_round"] == 6 and resumed["state"] == "finished"
    restarted = {line.split()[0] for line in started_at(env) - before}
    assert restarted == {"ga-pod-0-fl-service"}

    t3 = time.monotonic()
    reset = playbook("reset.yml", inventory, env=env)
    t4 = time.monotonic()
    for phase, seconds in (("first_site_s", t1 - t0), ("second_site_s", t3 - t2),
                           ("reset_s", t4 - t3)):
        record_property(phase, round(seconds, 1))
    print(f"podman site.yml: first {t1 - t0:.0f} s (placement + 6 rounds), second "
          f"{t3 - t2:.0f} s, reset {t4 - t3:.0f} s")
    assert reset.rc == 0, reset.why()
    assert_nothing_left(env, pipeline)
