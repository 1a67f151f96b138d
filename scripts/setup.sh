#!/usr/bin/env bash
# Installs everything the demo and the tests need on a fresh Debian 12 machine, idempotently:
# apt packages, the pinned venv in .venv, and the collection link Ansible resolves
# hfl.orchestration through. Safe to re-run; does nothing that is already done. Ends by proving
# that podman runs pods that reach each other by alias (scripts/podman-check.sh, a few seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3.11}

# podman only recommends these, and we install without recommends: kube play builds its pause
# image from catatonit, and podman 4.3's CNI networks resolve pod aliases only with dnsname.
# lxc and debootstrap: the supervision test's system containers (systemd as PID 1).
APT_PACKAGES=(openssh-server podman runc catatonit golang-github-containernetworking-plugin-dnsname
  iproute2 dataset-fashion-mnist chromium prometheus lxc debootstrap)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: apt-get install ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "setup: building .venv from requirements.txt"
  [[ -x .venv/bin/python ]] || "$PY" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi

# ansible.cfg points collections_path here.
mkdir -p .tmp/collections/ansible_collections/hfl
ln -sfn "$ROOT" .tmp/collections/ansible_collections/hfl/orchestration

# Proof that the podman runtime can work here (a few seconds): two pods, one reaching the other
# by its network alias; fails with podman's own message otherwise.
scripts/podman-check.sh
