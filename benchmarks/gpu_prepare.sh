#!/usr/bin/env bash
# The companion of benchmarks/gpu_check.sh, run on a networked machine in the repository root:
# puts under .gpucheck/ (ignored by git, carried to the GPU node) what the GPU node lacks:
#   wheels/  aam's dependencies that a CUDA PyTorch image does not hold (Python 3.12, x86_64;
#            torch, accelerate, numpy, pandas, scipy, scikit-learn, h5py, matplotlib, tensorboard,
#            click, PyYAML, tqdm, attrs, requests, statsmodels are expected there)
#   cache/   the UniFrac matrix of the shipped Dataset (the node has no ssu; scikit-bio would
#            take minutes), under the key the runtime computes from the same data
# About 45 MB in all (the device tool carries at most 64 MiB with the checkout).
#   bash benchmarks/gpu_prepare.sh [PYTHON_VERSION]      # default 3.12
set -euo pipefail
cd "$(dirname "$0")/.."
pyver="${1:-3.12}"
dest=.gpucheck
mkdir -p "$dest/wheels" "$dest/cache" .git/info
grep -qxF "/$dest/" .git/info/exclude 2>/dev/null || echo "/$dest/" >> .git/info/exclude
py=.venv/bin/python
[ -x "$py" ] || py=python3
rm -f "$dest"/wheels/*.whl
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --platform any -d "$dest/wheels" \
  biom-format scikit-bio jsonschema referencing jsonschema-specifications rpds-py decorator array-api-compat
# the UniFrac matrix: the dry check pretrains the shipped Dataset for two steps, which computes it
AAM_CACHE_DIR="$PWD/$dest/cache" "$py" benchmarks/gpu_check.py --dry --out "$(mktemp -d)" --parts recipe >/dev/null
du -sh "$dest"/wheels "$dest"/cache
