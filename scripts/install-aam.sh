#!/usr/bin/env bash
# The one install step of aam. scripts/setup.sh runs it for a workstation or CI (.venv, editable,
# test extras) and every container recipe in containers/ runs it in %post, so an image holds
# exactly what the tests ran against.
#
#   scripts/install-aam.sh [--ssu] [--venv DIR | --python PY] [--editable] [--extras LIST]
#
#   --ssu          make sure Striped UniFrac's `ssu` is on PATH: apt (unifrac-tools) as root on
#                  Debian/Ubuntu, else conda/mamba/micromamba (bioconda unifrac-binaries)
#   --venv DIR     create DIR (python3 -m venv) when missing and install into it
#   --python PY    install into this interpreter's environment
#   --editable     pip install -e (a checkout you edit); images install a normal copy
#   --extras LIST  optional dependency groups of pyproject.toml, e.g. test
#
# torch: kept when the interpreter already imports it (a vendor base image's build); otherwise
# torch==$AAM_TORCH_VERSION (default 2.13.0) from $AAM_TORCH_INDEX when set (the PyTorch index of
# a CUDA or ROCm build), else from the configured index (a CPU build here; unpinned, pip would
# fetch a multi-GB CUDA build).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

want_ssu=no venv="" py="" editable=no extras=""
usage() { echo "usage: scripts/install-aam.sh [--ssu] [--venv DIR | --python PY] [--editable] [--extras LIST]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --ssu) want_ssu=yes ;;
    --venv) [ $# -ge 2 ] || usage; venv="$2"; shift ;;
    --python) [ $# -ge 2 ] || usage; py="$2"; shift ;;
    --editable) editable=yes ;;
    --extras) [ $# -ge 2 ] || usage; extras="$2"; shift ;;
    *) usage ;;
  esac
  shift
done
[ -n "$venv" ] && [ -n "$py" ] && { echo "install-aam: --venv and --python go one at a time" >&2; exit 2; }
case "$extras" in *[!A-Za-z0-9,_-]*) echo "install-aam: --extras takes names like test or test,unifrac" >&2; exit 2 ;; esac

if [ "$want_ssu" = yes ] && ! command -v ssu >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-aam: installing ssu (apt: unifrac-tools)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends unifrac-tools >/dev/null
  else
    conda_cmd=""
    for c in micromamba mamba conda; do command -v "$c" >/dev/null 2>&1 && { conda_cmd="$c"; break; }; done
    if [ -n "$conda_cmd" ]; then
      echo "install-aam: installing ssu ($conda_cmd: bioconda unifrac-binaries)"
      "$conda_cmd" install -y -q -c conda-forge -c bioconda unifrac-binaries
    fi
  fi
  command -v ssu >/dev/null 2>&1 || {
    echo "install-aam: ssu is not installed and neither apt (as root) nor conda could install it;" \
         "install unifrac-tools (Debian/Ubuntu) or bioconda's unifrac-binaries" >&2; exit 1; }
fi

if [ -n "$venv" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  py="$venv/bin/python"
fi
[ -n "$py" ] || exit 0  # --ssu alone
command -v "$py" >/dev/null 2>&1 || { echo "install-aam: no Python interpreter '$py'" >&2; exit 1; }

"$py" -m pip install -q --upgrade pip
if ! "$py" -c 'import torch' >/dev/null 2>&1; then
  torch_args=("torch==${AAM_TORCH_VERSION:-2.13.0}")
  [ -n "${AAM_TORCH_INDEX:-}" ] && torch_args+=(--index-url "$AAM_TORCH_INDEX")
  echo "install-aam: installing ${torch_args[*]}"
  "$py" -m pip install -q "${torch_args[@]}"
fi
target="$root"
[ -n "$extras" ] && target="$root[$extras]"
if [ "$editable" = yes ]; then
  "$py" -m pip install -q -e "$target"
else
  "$py" -m pip install -q "$target"
fi
"$py" - <<'PY'
import torch, aamctl, aam_runtime  # noqa: F401  - the install is usable
hip = getattr(torch.version, "hip", None)
build = f"ROCm {hip}" if hip else (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU")
print(f"install-aam: aam ready (torch {torch.__version__}, {build})")
PY
