#!/usr/bin/env bash
# The prepared GPU check, on a GPU node with no network (its python3 holds a CUDA torch):
#   bash benchmarks/gpu_check.sh OUT_DIR [gpu_check.py options]
# Installs the wheels benchmarks/gpu_prepare.sh left in .gpucheck/wheels into a scratch folder,
# points the UniFrac cache at .gpucheck/cache, and runs benchmarks/gpu_check.py into OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: benchmarks/gpu_check.sh OUT_DIR [options]}"
shift
mkdir -p "$out"
py=${PYTHON:-python3}
site="${TMPDIR:-/tmp}/aam-gpucheck-site"
if ls .gpucheck/wheels/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    .gpucheck/wheels/*.whl > "$out/install.log" 2>&1 || { echo "gpu check: installing the wheels failed (see $out/install.log)"; exit 2; }
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
[ -d .gpucheck/cache ] && export AAM_CACHE_DIR="${AAM_CACHE_DIR:-$PWD/.gpucheck/cache}"
# the local executor hands out the GPUs torch sees (in case the driver's /proc entries are hidden)
if [ -z "${AAM_LOCAL_GPUS:-}" ]; then
  n=$("$py" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
  [ "$n" -gt 0 ] 2>/dev/null && export AAM_LOCAL_GPUS="$n"
fi
export AAM_PYTHON="$py"
exec "$py" benchmarks/gpu_check.py --out "$out" "$@"
