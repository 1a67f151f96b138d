# Copyright: hfl.orchestration developers
# Apache License 2.0
"""Fetch fl_service /status documents (target side, standard library only).

Used by the fl_status module on the host it runs on; the orchestrator runs that module once per
loop iteration for every service, so the fetches run in parallel and a dead service costs one
timeout, not one per service.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.urls import ConnectionError as UrlConnectionError
from ansible.module_utils.urls import open_url


def fetch(url, timeout=3.0):
    """The /status document at ``url`` with ``reachable: true``, or ``reachable: false`` and why."""
    try:
        resp = open_url(url, timeout=timeout)
        doc = json.loads(resp.read().decode("utf-8"))
        if not isinstance(doc, dict):
            return {"reachable": False, "error": "not a JSON object"}
        doc["reachable"] = True
        return doc
    except (OSError, ValueError, UrlConnectionError) as e:  # URLError, HTTPError: OSErrors
        return {"reachable": False, "error": str(getattr(e, "reason", e))}


def fetch_all(services, timeout=3.0):
    """{name: status} for a list of {name, url}, fetched concurrently."""
    if not services:
        return {}
    with ThreadPoolExecutor(max_workers=min(32, len(services))) as pool:
        docs = pool.map(lambda s: fetch(s["url"], timeout), services)
        return dict(zip([s["name"] for s in services], docs))  # noqa: B905 - same length
