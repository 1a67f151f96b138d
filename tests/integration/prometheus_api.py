"""Asking a test's Prometheus over its HTTP API, from this namespace or a fleet's controller."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request


def fetch_here(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def query(base, promql, fetch=fetch_here):
    """The result vector of an instant query: [{metric: {...}, value: [t, "v"]}]."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    return json.loads(fetch(url))["data"]["result"]


def by_label(result, label):
    """{label value: sample value} of a result vector."""
    return {r["metric"][label]: r["value"][1] for r in result}


def poll(what, read, done, timeout=120):
    """read() until done(value), within timeout seconds; fails with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s; last: {value}")
        time.sleep(0.5)
