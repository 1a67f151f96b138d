#!/usr/bin/env bash
# Runs the README's two commands, `make demo` then `make test`, as root in a brand-new Debian 12
# (bookworm) LXC system container, from a fresh `git clone` of this repository at REF, so that an
# install step scripts/setup.sh misses shows up here before it reaches CI (where packages left on
# the machine by hand can hide it). Not part of `make test`: it needs root, LXC and 30+ minutes.
#
#   scripts/fresh-check.sh [--keep] [--only demo|test] [REF]
#
#   REF          commit, branch or tag to check (default HEAD). Committed work only: the container
#                gets a clone, not this working tree.
#   --only X     run only `make demo` or only `make test`.
#   --keep       leave the container (and its network) running afterwards, and print how to
#                enter it and how to remove it.
#
# Prints each command's wall time and exit status and ends with one JSON line:
#   {"demo": {"rc": 0, "s": 312, "log": "..."}, "test": {...}, "ref": "<sha>"}
# Exits non-zero when either command failed. Logs: $HFL_FRESH_CHECK_DIR/logs/<container>/.
#
# Scratch folder: $HFL_FRESH_CHECK_DIR (default /var/tmp/hfl-fresh-check). The base root file
# system (debootstrap + the baseline below) is cached there between runs; every run copies it
# into a new container, which is destroyed at the end, on failure and on Ctrl-C too (unless --keep).
#
# The container: privileged, AppArmor unconfined, all devices, proc/sys/cgroup mounted rw (the
# tests create network namespaces, bridges, sshd hosts and podman containers inside it), systemd
# as PID 1, its own network namespace on a host bridge with NAT to the host's uplink (so apt and
# pip reach the registries the host reaches, and the tests' bridges, namespaces, iptables rules
# and ports stay inside the container instead of meeting other runs on the host).
# Installs on the host, once: lxc, debootstrap, iptables, git.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "fresh-check: $*" >&2; exit 2; }
say() { echo "fresh-check: $*"; }

KEEP=0 ONLY="" REF=HEAD
while (($#)); do
  case $1 in
    --keep) KEEP=1 ;;
    --only) [[ ${2:-} == demo || ${2:-} == test ]] || die "--only takes demo or test"; ONLY=$2; shift ;;
    --only=*) ONLY=${1#--only=}; [[ $ONLY == demo || $ONLY == test ]] || die "--only takes demo or test" ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) REF=$1 ;;
  esac
  shift
done
COMMANDS=(demo test)
[[ -n $ONLY ]] && COMMANDS=("$ONLY")

[[ $EUID -eq 0 ]] || die "needs root (it creates a privileged LXC container)"
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHA=$(git -C "$REPO" rev-parse --verify -q "$REF^{commit}") || die "not a commit here: $REF"

SCRATCH=${HFL_FRESH_CHECK_DIR:-/var/tmp/hfl-fresh-check}
LXCPATH=$SCRATCH/lxc
SUITE=bookworm
MIRROR=${HFL_FRESH_CHECK_MIRROR:-http://deb.debian.org/debian}
TIMEOUT_S=${HFL_FRESH_CHECK_TIMEOUT:-5400}   # per command; CI gives a whole run 5400 s
BRIDGE=hflfc0 NET=10.213.13                  # host side .1, containers .2-.254; NAT to the uplink
CLONE=/root/hfl-orchestration                # where the clone lies in the container

# What a fresh machine of our kind ships, as far as setup.sh could lean on it (Debian packages
# from /work/.library/env/packages/installed-python.txt, the `python` kind's image list): Python
# 3.11 with venv, pip and headers, a C toolchain, git, make, curl and the CA bundle, iproute2,
# the usual process tools. Everything else `make demo` / `make test` need must come from
# scripts/setup.sh; a failure here beyond this list is a setup.sh gap. systemd/systemd-sysv/dbus
# boot the system container; debian-archive-keyring verifies the mirror.
BASELINE=(
  systemd systemd-sysv dbus debian-archive-keyring ca-certificates curl netbase
  python3.11 python3.11-venv python3.11-dev python3-pip python3-venv python3-dev
  build-essential gcc make git
  iproute2 openssh-client procps psmisc lsof less file unzip xz-utils
)
# The rest of our machine kind's image that matters to setup.sh, copied from this host into the
# container: the apt sources, the policy-rc.d that stops apt from starting services (so CI and
# the tests start daemons themselves), the CA bundle additions, the pip configuration, and the
# environment the image sets (CI gets the machine's environment).
IMAGE_ENV=(PIP_CERT PIP_DEFAULT_TIMEOUT PIP_DISABLE_PIP_VERSION_CHECK PIP_FIND_LINKS
           PYTHONDONTWRITEBYTECODE PYTHONUNBUFFERED DEBIAN_FRONTEND LANG SSL_CERT_FILE
           SSL_CERT_DIR REQUESTS_CA_BUNDLE CURL_CA_BUNDLE GIT_SSL_CAINFO)
# pip on this kind of machine takes torch 2.14.1 / torchvision 0.29.1 (and the CUDA wheels they
# pull) from local indexes on disk: /etc/xdg/pip/pip.conf caps torch at what lies there, and
# ~/.config/pip/pip.conf adds find-links and file:// extra indexes. A fresh machine of our kind
# has them, so the container gets the same config and the same folders bind-mounted read-only,
# instead of downloading several GB of CUDA wheels that CI would never download either.
PIP_CONFS=(/etc/xdg/pip /root/.config/pip /etc/pip.conf)

mkdir -p "$SCRATCH"/{cache,logs,lxc}
exec 9>"$SCRATCH/lock"
flock -n 9 || die "another fresh-check is running (lock $SCRATCH/lock)"

# ---------------------------------------------------------------------------------------------
# Host tools (idempotent).
need=()
for p in lxc debootstrap iptables git; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  say "host: apt-get install ${need[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# Removes a folder only when nothing is mounted below it (a bind mount of /opt or /proc there
# would otherwise be emptied through it).
safe_rm() {
  local dir=$1 m
  [[ -e $dir ]] || return 0
  dir=$(realpath "$dir")
  awk -v d="$dir/" 'index($5 "/", d) == 1 {print $5}' /proc/self/mountinfo | sort -r \
    | while read -r m; do umount -l "$m" || true; done
  if awk -v d="$dir/" 'index($5 "/", d) == 1 {found=1} END {exit !found}' /proc/self/mountinfo; then
    echo "fresh-check: still mounted under $dir, not removing it" >&2
    return 1
  fi
  rm -rf "$dir"
}

# ---------------------------------------------------------------------------------------------
# The cached base root file system: minbase + the baseline, keyed by what goes into it.
ca_files=(/usr/local/share/ca-certificates/*.crt)
[[ -e ${ca_files[0]} ]] || ca_files=()
key=$( { echo "v1 $SUITE $MIRROR ${BASELINE[*]}"; cat "${ca_files[@]}" /dev/null; } | sha256sum | cut -c1-16)
BASE=$SCRATCH/cache/rootfs-$SUITE-$key
if [[ ! -f $BASE/.complete ]]; then
  for old in "$SCRATCH"/cache/rootfs-*; do [[ -e $old ]] && safe_rm "$old"; done
  say "building the base root file system (debootstrap $SUITE + baseline; cached for later runs)"
  t0=$SECONDS
  include=$(IFS=,; echo "${BASELINE[*]}")
  debootstrap --variant=minbase --include="$include" "$SUITE" "$BASE.tmp" "$MIRROR" \
    > "$SCRATCH/cache/debootstrap.log" 2>&1 \
    || { tail -20 "$SCRATCH/cache/debootstrap.log"; safe_rm "$BASE.tmp"; die "debootstrap failed (log $SCRATCH/cache/debootstrap.log)"; }
  if ((${#ca_files[@]})); then
    cp "${ca_files[@]}" "$BASE.tmp/usr/local/share/ca-certificates/"
    chroot "$BASE.tmp" update-ca-certificates > /dev/null 2>&1
  fi
  chroot "$BASE.tmp" apt-get clean
  touch "$BASE.tmp/.complete"
  mv "$BASE.tmp" "$BASE"
  say "base built in $((SECONDS - t0)) s: $BASE"
fi

# ---------------------------------------------------------------------------------------------
# A new container.
NAME=hfl-fresh-$(date +%Y%m%d-%H%M%S)
CT=$LXCPATH/$NAME
LOGS=$SCRATCH/logs/$NAME
mkdir -p "$LOGS"
ip_forward_was=$(cat /proc/sys/net/ipv4/ip_forward)

# shellcheck disable=SC2317  # cleanup and others_running run from the traps
others_running() { lxc-ls -P "$LXCPATH" --running | tr -s ' \n' '\n' | grep -v -x -e "$NAME" -e '' -q; }
# shellcheck disable=SC2317
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((KEEP)) && [[ -d $CT ]]; then
    say "kept $NAME. Enter it:"
    echo "  lxc-attach -P $LXCPATH -n $NAME --clear-env -- bash -c '. /root/fresh-check.env; cd $CLONE; exec bash -i'"
    echo "  remove it: lxc-stop -k -P $LXCPATH -n $NAME && rm -rf $CT"
    echo "  then its network (unless another container uses it): ip link del $BRIDGE;" \
         "iptables -t nat -D POSTROUTING -s $NET.0/24 ! -d $NET.0/24 -j MASQUERADE;" \
         "iptables -D FORWARD -i $BRIDGE -j ACCEPT; iptables -D FORWARD -o $BRIDGE -j ACCEPT" \
         "$( ((ip_forward_was)) || echo "; sysctl -w net.ipv4.ip_forward=0")"
    exit "$rc"
  fi
  if [[ -d $CT ]]; then
    lxc-stop -k -P "$LXCPATH" -n "$NAME" > /dev/null 2>&1 || true
    safe_rm "$CT" || true
  fi
  if ! others_running; then
    iptables -t nat -D POSTROUTING -s "$NET.0/24" ! -d "$NET.0/24" -j MASQUERADE 2> /dev/null || true
    iptables -D FORWARD -i "$BRIDGE" -j ACCEPT 2> /dev/null || true
    iptables -D FORWARD -o "$BRIDGE" -j ACCEPT 2> /dev/null || true
    ip link del "$BRIDGE" 2> /dev/null || true
    if [[ $ip_forward_was == 0 ]]; then sysctl -q -w net.ipv4.ip_forward=0 || true; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "fresh-check: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'echo; say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

say "container $NAME (ref $SHA)"
t0=$SECONDS
mkdir -p "$CT"
cp -a "$BASE" "$CT/rootfs"
rm -f "$CT/rootfs/.complete"
R=$CT/rootfs

# What our machine kind's image has besides packages (see above).
rm -f "$R/etc/apt/sources.list"
cp /etc/apt/sources.list.d/*.sources "$R/etc/apt/sources.list.d/" 2> /dev/null \
  || echo "deb $MIRROR $SUITE main" > "$R/etc/apt/sources.list"
[[ -f /etc/apt/sources.list ]] && cp /etc/apt/sources.list "$R/etc/apt/sources.list"
[[ -x /usr/sbin/policy-rc.d ]] && cp /usr/sbin/policy-rc.d "$R/usr/sbin/policy-rc.d"
cp -L /etc/resolv.conf "$R/etc/resolv.conf"
echo "$NAME" > "$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost ip6-localhost ip6-loopback\n' "$NAME" > "$R/etc/hosts"
for c in "${PIP_CONFS[@]}"; do
  [[ -e $c ]] && mkdir -p "$R$(dirname "$c")" && cp -a "$c" "$R$(dirname "$c")/"
done
# The folders that pip configuration points at (find-links, file:// indexes with their files/).
wheel_dirs=()
for d in $(cat /etc/xdg/pip/pip.conf /root/.config/pip/pip.conf /etc/pip.conf 2> /dev/null \
             | grep -E '^\s*(find-links|extra-index-url|index-url)' | cut -d= -f2-) ${PIP_FIND_LINKS:-}; do
  d=${d#file://}
  [[ $d == */simple ]] && d=${d%/simple}
  [[ $d == /* && -d $d ]] && wheel_dirs+=("$d")
done
mapfile -t wheel_dirs < <(printf '%s\n' "${wheel_dirs[@]}" | sort -u | grep .)

{
  echo "export CI=true HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  for v in "${IMAGE_ENV[@]}"; do
    [[ -n ${!v:-} ]] && printf 'export %s=%q\n' "$v" "${!v}"
  done
} > "$R/root/fresh-check.env"

git clone -q --no-hardlinks "$REPO" "$R$CLONE"
git -C "$R$CLONE" checkout -q --detach "$SHA"

# The network: a host bridge with NAT to the uplink; one address per container.
used=$(cat "$LXCPATH"/*/config 2> /dev/null | sed -n "s|^lxc.net.0.ipv4.address = $NET\.\([0-9]*\)/24|\1|p" || true)
for i in $(seq 2 254); do grep -qx "$i" <<< "$used" || { HOSTNUM=$i; break; }; done
ip link show "$BRIDGE" > /dev/null 2>&1 || {
  ip link add "$BRIDGE" type bridge
  ip addr add "$NET.1/24" dev "$BRIDGE"
}
ip link set "$BRIDGE" up
sysctl -q -w net.ipv4.ip_forward=1
iptables -t nat -C POSTROUTING -s "$NET.0/24" ! -d "$NET.0/24" -j MASQUERADE 2> /dev/null \
  || iptables -t nat -A POSTROUTING -s "$NET.0/24" ! -d "$NET.0/24" -j MASQUERADE
iptables -C FORWARD -i "$BRIDGE" -j ACCEPT 2> /dev/null || iptables -I FORWARD -i "$BRIDGE" -j ACCEPT
iptables -C FORWARD -o "$BRIDGE" -j ACCEPT 2> /dev/null || iptables -I FORWARD -o "$BRIDGE" -j ACCEPT

{
  echo "lxc.uts.name = $NAME"
  echo "lxc.rootfs.path = dir:$R"
  echo "lxc.arch = amd64"
  echo "lxc.tty.dir = lxc"
  echo "lxc.pty.max = 1024"
  echo "lxc.tty.max = 4"
  echo "lxc.autodev = 1"
  # Nesting: the tests need netns, bridges, iptables, sysctls and podman (runc, cgroups v1).
  echo "lxc.apparmor.profile = unconfined"
  echo "lxc.cap.drop = sys_module sys_time mac_admin mac_override"
  echo "lxc.cgroup.devices.allow = a"
  # force: LXC mounts each host hierarchy itself. Left to systemd (the default with cgroup
  # namespaces), systemd co-mounts cpu,cpuacct, which fails where the host mounts them apart,
  # and the container has no cpu controller for podman's CPU limits.
  echo "lxc.mount.auto = proc:rw sys:rw cgroup:rw:force"
  echo "lxc.mount.entry = /sys/fs/fuse/connections sys/fs/fuse/connections none bind,optional 0 0"
  echo "lxc.mount.entry = /dev/fuse dev/fuse none bind,create=file,optional 0 0"
  echo "lxc.mount.entry = /dev/net/tun dev/net/tun none bind,create=file,optional 0 0"
  echo "lxc.net.0.type = veth"
  echo "lxc.net.0.link = $BRIDGE"
  echo "lxc.net.0.flags = up"
  echo "lxc.net.0.name = eth0"
  echo "lxc.net.0.ipv4.address = $NET.$HOSTNUM/24"
  echo "lxc.net.0.ipv4.gateway = $NET.1"
  for d in "${wheel_dirs[@]}"; do
    echo "lxc.mount.entry = $d ${d#/} none bind,ro,create=dir 0 0"
  done
} > "$CT/config"

lxc-start -P "$LXCPATH" -n "$NAME" -d -l INFO -o "$LOGS/lxc.log" \
  || die "lxc-start failed (log $LOGS/lxc.log)"
lxc-wait -P "$LXCPATH" -n "$NAME" -s RUNNING -t 30 || die "container did not start (log $LOGS/lxc.log)"

in_ct() {  # in_ct CMD...: as root in the container, the CI environment, no stdin
  lxc-attach -P "$LXCPATH" -n "$NAME" --clear-env -- \
    bash -c '. /root/fresh-check.env && cd '"$CLONE"' && exec "$@"' in_ct "$@" < /dev/null
}
state=starting
for _ in $(seq 60); do  # until systemd answers on its bus (it may still be coming up)
  state=$(in_ct systemctl is-system-running 2> /dev/null) && break
  [[ $state == @(running|degraded|maintenance) ]] && break
  sleep 1
done
# The cgroup tmpfs as our machine kind has it (no systemd there): writable, holding only the
# hierarchies the host mounts. systemd in the container remounts it read-only and leaves folders
# for controllers it could not mount here (cpu,cpuacct, net_cls,net_prio, perf_event, hugetlb);
# podman's cgroupfs manager takes every folder there for a controller, so it then fails with
# "creating cgroup path for net_cls: mkdir /sys/fs/cgroup/net_cls/libpod_parent: read-only file
# system", or, writable, cannot remove a pod ("remove /sys/fs/cgroup/hugetlb/libpod_parent/...").
# shellcheck disable=SC2016  # expanded in the container
in_ct bash -c 'mount -o remount,rw /sys/fs/cgroup && for d in /sys/fs/cgroup/*; do
                 mountpoint -q "$d" || rm -rf --one-file-system "$d"; done'
in_ct timeout 30 curl -fsS -o /dev/null "$MIRROR/dists/$SUITE/Release" \
  || die "the container cannot reach $MIRROR (bridge $BRIDGE, NAT)"
say "container up in $((SECONDS - t0)) s (systemd: $state; wheel stores: ${wheel_dirs[*]:-none})"

# ---------------------------------------------------------------------------------------------
# The README's commands.
declare -A RC S
for cmd in "${COMMANDS[@]}"; do
  log=$LOGS/$cmd.log
  say "make $cmd (log $log)"
  t=$SECONDS
  # In the background and waited for, so that Ctrl-C or a TERM runs the cleanup at once (bash
  # runs traps only between commands); tee -i keeps the log going until then.
  set +e
  in_ct timeout -k 60 "$TIMEOUT_S" make "$cmd" 2>&1 | tee -i "$log" &
  wait $!
  RC[$cmd]=$?
  set -e
  S[$cmd]=$((SECONDS - t))
  say "make $cmd: rc ${RC[$cmd]} in ${S[$cmd]} s (log $log)"
done

json="{"
failed=0
for cmd in "${COMMANDS[@]}"; do
  json+="\"$cmd\": {\"rc\": ${RC[$cmd]}, \"s\": ${S[$cmd]}, \"log\": \"$LOGS/$cmd.log\"}, "
  ((RC[$cmd] == 0)) || failed=1
done
json+="\"ref\": \"$SHA\"}"
echo "$json"
exit "$failed"
