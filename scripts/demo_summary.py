"""Prints the demo's one JSON line from the global aggregator's collected results:
{"pipeline", "final_accuracy", "global_rounds", "results"}. Reads the plan to find them."""

import argparse
import json
import subprocess
import sys
from pathlib import Path


def pipeline_dir(inventory):
    """<hfl_state_dir>/<pipeline> as Ansible resolves it for the inventory's GA."""
    out = subprocess.run(
        ["ansible-inventory", "-i", inventory, "--list"], check=True, capture_output=True,
        text=True).stdout
    hostvars = json.loads(out)["_meta"]["hostvars"]
    ga = next(v for v in hostvars.values() if v.get("hfl_role") == "global_aggregator")
    state_dir = Path(str(ga.get("hfl_state_dir", "~/.hfl"))).expanduser()
    return state_dir / str(ga.get("hfl_pipeline", "hfl"))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-i", "--inventory", default="inventories/local")
    args = parser.parse_args()
    folder = pipeline_dir(args.inventory)
    plan = json.loads((folder / "plan.json").read_text())
    ga = next(s for s in plan["services"] if s["role"] == "global_aggregator")
    results = folder / "results"
    rows = [json.loads(line) for line in (results / f"{ga['name']}.jsonl").read_text().splitlines()
            if line.strip()]
    if not rows:
        sys.exit(f"no rounds in {results / (ga['name'] + '.jsonl')}")
    print(json.dumps({
        "pipeline": plan["pipeline"],
        "final_accuracy": rows[-1]["accuracy"],
        "global_rounds": rows[-1]["global_round"],
        "results": str(results),
    }))


if __name__ == "__main__":
    main()
