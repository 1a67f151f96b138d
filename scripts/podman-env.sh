#!/usr/bin/env bash
# Prints `export` lines that point podman at a config kept under a scratch folder, and writes
# that config. Use: eval "$(scripts/podman-env.sh [DIR])"  (DIR defaults to .tmp/podman).
# Why: on our build machines podman's defaults fail (this-machine.md §3): crun cannot run under
# the hybrid cgroup layout and root lacks CAP_SYS_RESOURCE to raise rlimits, so containers run
# with runc and ulimits at or below the host's. On a normal host podman needs none of this.
# Each folder is a store of its own, down to its per-boot state (tmp_dir: the `alive` file,
# events) and its locks (file locks there, not the host-wide /dev/shm/libpod_lock): stores in
# use at the same time (tests, scripts/podman-check.sh) never see each other, and one's
# `podman system reset` cannot make another "refresh" its running containers.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mkdir -p "${1:-$root/.tmp/podman}" && cd "${1:-$root/.tmp/podman}" && pwd)
mkdir -p "$dir/networks" "$dir/storage" "$dir/run" "$dir/tmp"
nofile=$(ulimit -n)
cat > "$dir/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$dir/tmp"
lock_type = "file"

[network]
network_config_dir = "$dir/networks"
CONF
cat > "$dir/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$dir/storage"
runroot = "$dir/run"
CONF
echo "export CONTAINERS_CONF=$dir/containers.conf CONTAINERS_STORAGE_CONF=$dir/storage.conf"
