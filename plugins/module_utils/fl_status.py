# Copyright: hfl.orchestration developers
# Apache License 2.0
"""Fetch fl_service /status documents (target side, standard library only).

Used by the fl_status module on the host it runs on; the orchestrator runs that module once per
loop iteration for every service, so the fetches run in parallel and a dead service costs one
timeout, not one per service.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def fetch(url, timeout=3.0):
    """The /status document at ``url`` with ``reachable: true``, or ``reachable: false`` and why."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) only
            doc = json.loads(resp.read().decode("utf-8"))
        if not isinstance(doc, dict):
            return {"reachable": False, "error": "not a JSON object"}
        doc["reachable"] = True
        return doc
    except (OSError, ValueError, urllib.error.URLError) as e:
        return {"reachable": False, "error": str(getattr(e, "reason", e))}


def fetch_all(services, timeout=3.0):
    """{name: status} for a list of {name, url}, fetched concurrently."""
    if not services:
        return {}
    with ThreadPoolExecutor(max_workers=min(32, len(services))) as pool:
        docs = pool.map(lambda s: fetch(s["url"], timeout), services)
        return dict(zip([s["name"] for s in services], docs))  # noqa: B905 - same length
