#!/usr/bin/env bash
# Set up aam on a fresh machine: a virtual environment with a CPU build of torch, and (with
# --system, as root on Debian/Ubuntu) the system tools the tests use: Striped UniFrac (ssu),
# SLURM and munge, QIIME 2. Idempotent: a second run does nothing unless pyproject.toml changed.
# The install itself is scripts/install-aam.sh, the same step the container recipes run.
set -euo pipefail
cd "$(dirname "$0")/.."

want_system=no
for arg in "$@"; do
  case "$arg" in
    --system) want_system=yes ;;
    *) echo "usage: scripts/setup.sh [--system]" >&2; exit 2 ;;
  esac
done

if [ "$want_system" = yes ]; then
  bash scripts/install-aam.sh --ssu || echo "setup: continuing without ssu (the UniFrac tests need it)" >&2
  missing=()
  command -v slurmctld >/dev/null 2>&1 || missing+=(slurm-wlm)
  command -v munged >/dev/null 2>&1 || missing+=(munge)
  # QIIME 2 2022.11 from Debian, into the system Python: the tests make real .qza archives and read
  # our outputs back with it (aam itself never imports it)
  command -v qiime >/dev/null 2>&1 || missing+=(qiime q2cli q2-types q2-feature-table)
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "setup: installing ${missing[*]} (apt)"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "setup: missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]})" >&2
    fi
  fi
fi

PY=${PYTHON:-python3}
stamp=.venv/.aam-setup
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/aamctl ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# CPU build of torch, pinned (an unpinned torch pulls a multi-GB CUDA build; for GPUs see README)
bash scripts/install-aam.sh --python .venv/bin/python --editable --extras test
echo "$want" > "$stamp"
echo "setup: ready (.venv)"
