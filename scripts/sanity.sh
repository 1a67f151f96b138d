#!/usr/bin/env bash
# ansible-test sanity for the collection's plugins, offline-friendly.
# ansible-test must run from a real ansible_collections/hfl/orchestration folder in its own git
# tree (the .tmp/collections link resolves back into this repo, whose .gitignore hides .tmp), so
# the plugins are copied to .tmp/sanity first.
# Its per-test venvs bootstrap pip with a get-pip script downloaded from a host we cannot reach;
# a stand-in with the same command line (ensurepip, then pip install from the configured index)
# is put in its cache instead; the test requirements then come from PyPI as usual. Every sanity
# test runs, locally on Python 3.11 (no --docker: no container images can be pulled here).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$ROOT/.venv/bin:$PATH"

# ansible-core 2.19's ansible-test bootstraps pip 24.2.
pip_version=24.2
cache=~/.ansible/test/cache/get_pip_${pip_version//./_}.py
if [[ ! -s $cache ]]; then
  mkdir -p "$(dirname "$cache")"
  cat > "$cache" <<'PY'
# Stand-in for get-pip.py (see scripts/sanity.sh): same arguments, pip from ensurepip + the index.
import subprocess, sys
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
PY
fi

dest=.tmp/sanity/ansible_collections/hfl/orchestration
rm -rf .tmp/sanity
mkdir -p "$dest"
cp -r galaxy.yml meta plugins "$dest/"
mkdir -p "$dest/tests" && cp -r tests/sanity "$dest/tests/"
find "$dest" -name __pycache__ -prune -exec rm -rf {} +
cd "$dest"
git init -q
git add -A
git -c user.name=sanity -c user.email=sanity@localhost commit -qm sanity
exec ansible-test sanity --python 3.11 --local --color no "$@"
