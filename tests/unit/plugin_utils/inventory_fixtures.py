"""Small inventories as Ansible hands them to plugins: merged hostvars and groups."""

import copy

PIPELINE_VARS = {"hfl_pipeline": "demo", "hfl_global_rounds": 3, "hfl_dataset": "digits"}


def local_hfl(**overrides):
    """1 GA, 2 LAs, 4 clients on this machine; overrides: {host: {var: value}}."""
    hosts = {
        "ga": {"hfl_role": "global_aggregator", "hfl_port": 8080},
        "la1": {"hfl_role": "local_aggregator", "hfl_port": 8081},
        "la2": {"hfl_role": "local_aggregator", "hfl_port": 8082},
        "c1": {"hfl_role": "client", "hfl_port": 8091, "hfl_parent": "la1"},
        "c2": {"hfl_role": "client", "hfl_port": 8092, "hfl_parent": "la1"},
        "c3": {"hfl_role": "client", "hfl_port": 8093, "hfl_parent": "la2"},
        "c4": {"hfl_role": "client", "hfl_port": 8094, "hfl_parent": "la2"},
    }
    for vars_ in hosts.values():
        vars_.update(PIPELINE_VARS, ansible_connection="local")
    for name, vars_ in overrides.items():
        hosts.setdefault(name, {}).update(vars_)
    groups = {
        "cloud": ["ga"],
        "fog": ["la1", "la2"],
        "edge": ["c1", "c2", "c3", "c4"],
    }
    groups["hfl_cluster"] = [h for g in ("cloud", "fog", "edge") for h in groups[g]]
    return hosts, groups


def without(hosts, groups, *names):
    hosts, groups = copy.deepcopy(hosts), copy.deepcopy(groups)
    for n in names:
        hosts.pop(n)
        for members in groups.values():
            if n in members:
                members.remove(n)
    return hosts, groups


def pem_credentials(plan, tag="1"):
    """Stand-ins for role fl_pki's files as placement reads them ({ca, certs, keys}: PEM texts),
    distinct per service; ``tag`` tells one issue of them from another (a rotation)."""
    def pem(kind, body):
        return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n"

    names = [s["name"] for s in plan["services"]]
    return {"ca": pem("CERTIFICATE", f"ca-{tag}"),
            "certs": {n: pem("CERTIFICATE", f"{n}-cert-{tag}") for n in names},
            "keys": {n: pem("PRIVATE KEY", f"{n}-key-{tag}") for n in names}}
