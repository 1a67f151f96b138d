#!/usr/bin/env bash
# Proves that podman on this machine runs pods the way the podman runtime does: two trivial pods
# played with `podman kube play` from a scratch store (scripts/podman-env.sh) onto a network
# created like the pipeline's (`podman network create`), the second reaching the first by its
# network alias. A few seconds; leaves nothing behind. Exits 1 with podman's own message (or the
# second pod's) when they cannot, e.g. without catatonit (kube play's pause binary) or without
# the CNI dnsname plugin (aliases do not resolve). scripts/setup.sh runs it last.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/hfl-podman-check.XXXXXX")
eval "$("$root/scripts/podman-env.sh" "$scratch/podman")"
# Network names key host-wide state (CNI IPAM, dnsname's dnsmasq): one of our own per run.
net="hfl-check-$$"
image=localhost/hfl/check:base

cleanup() {
  podman pod rm --force --time 0 --all >/dev/null 2>&1 || true
  podman network rm --force "$net" >/dev/null 2>&1 || true
  podman system reset --force >/dev/null 2>&1 || true
  # What CNI keeps per network name outside the store (IPAM leases, dnsname's dnsmasq files).
  rm -rf "/var/lib/cni/networks/$net" "/run/containers/cni/dnsname/$net" "$scratch"
}
trap cleanup EXIT

fail() {
  echo "podman-check: $1" >&2
  local line
  [[ -z ${2:-} ]] || while IFS= read -r line; do echo "podman-check:   $line"; done <<<"$2" >&2
  exit 1
}

# Run a podman command; on failure, stop with its own message.
run() {
  local out
  if ! out=$(podman "$@" 2>&1); then
    fail "podman $1 $2 failed:" "$out"
  fi
}

start=$EPOCHREALTIME
# The image the integration tests use too: a root of links into /usr, which the pods mount.
rootfs="$scratch/rootfs"
mkdir -p "$rootfs"/{usr,etc,tmp,proc,sys,dev,run}
for d in bin lib lib64 sbin; do ln -s "usr/$d" "$rootfs/$d"; done
out=$(tar -C "$rootfs" -c . | podman import -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' - "$image" 2>&1) \
  || fail "podman import failed:" "$out"
run network create "$net"

# a serves HTTP; b resolves a's alias and fetches a page, retrying while a's server starts.
cat > "$scratch/a.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata: {name: check-a}
spec:
  containers:
    - name: main
      image: $image
      command: [python3, -m, http.server, "8080"]
      volumeMounts: [{name: usr, mountPath: /usr, readOnly: true}]
  volumes: [{name: usr, hostPath: {path: /usr, type: Directory}}]
YAML
cat > "$scratch/b.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata: {name: check-b}
spec:
  restartPolicy: Never
  containers:
    - name: main
      image: $image
      command: [python3, -c]
      args:
        - |
          import socket, time, urllib.request
          try:  # a's alias exists once its pod is up: no retry
              socket.getaddrinfo("check-a", 8080)
          except OSError as exc:
              raise SystemExit(f"check-b cannot resolve check-a, the alias of pod check-a: {exc}")
          end = time.monotonic() + 15
          while True:
              try:
                  urllib.request.urlopen("http://check-a:8080/", timeout=2).read()
                  break
              except OSError as exc:
                  if time.monotonic() > end:
                      raise SystemExit(f"check-b cannot reach check-a:8080: {exc}")
                  time.sleep(0.1)
      volumeMounts: [{name: usr, mountPath: /usr, readOnly: true}]
  volumes: [{name: usr, hostPath: {path: /usr, type: Directory}}]
YAML
run kube play --network "$net:alias=check-a" "$scratch/a.yaml"
run kube play --network "$net:alias=check-b" "$scratch/b.yaml"
code=$(podman wait check-b-main 2>&1) || fail "podman wait check-b-main failed:" "$code"
if [[ $code != 0 ]]; then
  plugins=$(grep -ho '"type": *"[a-z]*"' "$scratch/podman/networks/$net".* 2>/dev/null | tr '\n' ' ')
  fail "a pod cannot reach another by its network alias (network $net: ${plugins:-no config});" \
    "$(podman logs check-b-main 2>&1 | tail -n 5)
without the CNI dnsname plugin (Debian golang-github-containernetworking-plugin-dnsname) podman 4.3
resolves no aliases; networks created before it was installed lack it (recreate them)."
fi
echo "podman-check: two pods, one reached the other by its alias" \
  "($(awk "BEGIN {printf \"%.1f\", $EPOCHREALTIME - $start}") s)"
