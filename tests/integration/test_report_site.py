"""The report of an orchestrated site.yml run in which a client joins by an edit of the
inventory file while the pipeline trains (process runtime, mutual TLS, a federated evaluation
every third round): report.yml collects the joiner's results although site.yml read the
inventory before it existed, and the report lists it with its rounds and histogram; its
figures are formatted, none shows as None, and headless Chromium decodes every plot."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from headless import CHROMIUM, images_loaded, screenshot
from hfl_helpers import (
    ROOT,
    ansible_env,
    call,
    first_failure,
    free_ports,
    local_inventory,
    pki_context,
    playbook,
    stop_processes_under,
    triggered,
)

pytestmark = pytest.mark.integration
PIPELINE = "demo"


def jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class SiteRun:
    """site.yml in the background, in a session of its own."""

    def __init__(self, inventory: Path, log: Path) -> None:
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory),
                 str(ROOT / "playbooks" / "site.yml")], cwd=ROOT, env=ansible_env(),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def why(self) -> str:
        text = self.log.read_text()
        return f"first failed task: {first_failure(text) or '(none)'}\n{text[-3000:]}"

    def until(self, what: str, ready, timeout: float):
        """Poll ready() while site.yml runs, within timeout seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = ready()
            if value:
                return value
            assert self.proc.poll() is None, f"site.yml ended before {what}:\n{self.why()}"
            time.sleep(0.5)
        raise AssertionError(f"no {what} within {timeout} s\n{self.why()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def test_report_of_an_orchestrated_run_lists_a_joiner(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed")
    inventory = local_inventory(tmp_path, lambda tiers, cv: cv.update(
        # Room for a fifth client without a new partitioning of the others' data.
        hfl_global_rounds=1000, hfl_num_partitions=6, hfl_evaluate_every=3,
        hfl_orchestrate=True, hfl_orchestrate_poll_s=1, hfl_orchestrate_max_wall_s=900))
    state = tmp_path / "controller" / PIPELINE
    hosts = tmp_path / "hosts" / PIPELINE
    site = SiteRun(inventory, tmp_path / "site.log")
    try:
        site.until("orchestrator attached", lambda: any(
            triggered(e, "attach") for e in jsonl(state / "events.jsonl")), 900)
        doc = yaml.safe_load((inventory / "hosts.yml").read_text())
        doc["hfl_cluster"]["children"]["edge"]["hosts"]["c5"] = {
            "hfl_role": "client", "hfl_port": free_ports(1)[0],
            "hfl_link_cost": {"la1": 1, "la2": 4}}
        (inventory / "hosts.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
        site.until("c5 in two of la1's rounds", lambda: len(
            {r["global_round"] for r in jsonl(hosts / "la1" / "state" / "results.jsonl")
             if "c5" in r.get("participants", [])}) >= 2, 900)
        # End the run two rounds on, as the controller does for a budget.
        ga_port = doc["hfl_cluster"]["children"]["cloud"]["hosts"]["ga"]["hfl_port"]
        context = pki_context(state / "pki")
        now = call(f"https://127.0.0.1:{ga_port}/status", context)[1]["global_round"]
        code, reply = call(f"https://127.0.0.1:{ga_port}/control", context,
                           {"global_rounds": now + 2})
        assert code == 200, reply
        site.until("the end of site.yml", lambda: site.proc.poll() is not None, 900)
        assert site.proc.returncode == 0, site.why()
    finally:
        site.stop()
        playbook("reset.yml", inventory)
        stop_processes_under(tmp_path)

    assert jsonl(state / "results" / "c5.jsonl"), "the joiner's results were not collected"
    page = state / "report.html"
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", re.sub(
        r"<style>.*?</style>", " ", page.read_text(), flags=re.S))).split())
    assert "None" not in text and "nan" not in text.lower()
    joined = re.search(r"c5 la1 (\d+) (\d+)\u2013\d+ [\d,]+ [\d.]+ MB first in round (\d+) ",
                       text)
    assert joined, text[text.find("Clients"):][:1500]
    assert joined[2] == joined[3] and "no class histogram" not in text
    assert re.search(r"final accuracy \d+\.\d %", text)
    assert re.search(r"c5 \u2192 la1 [\d.]+ MB [\d.]+ MB [\d.]+ MB 1 [\d.,]+", text)
    assert "Federated evaluation" in text and "Round timing" in text
    # learning, federated evaluation, cost, round timing, one topology per change, histograms
    changes = [e for e in jsonl(state / "events.jsonl") if e.get("action") in ("apply", "revert")]
    expected = 5 + len(changes)
    assert images_loaded(page, tmp_path) == f"{expected}/{expected}"
    shot = screenshot(page, tmp_path / "report.png", tmp_path, size="1050,5200")
    assert shot.read_bytes().startswith(b"\x89PNG")
