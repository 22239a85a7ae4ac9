#!/usr/bin/env bash
# benchmarks/gpu.py on a lent GPU in one call (about 9 minutes): from the repository root, after
# `bash ../shared/device/wheels.sh` here has put the wheels the GPU machine lacks into .whl/ (uploaded with
# the work tree), run there `bash benchmarks/gpu_device.sh [gpu.py flags]`; the JSONs land in $OUT.
# Two default tasks at 250 s each fit the call with the install; pass --budget-s 270 --envs ONE for one task.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
out=${OUT:-benchmarks/results}
python3 benchmarks/gpu.py --budget-s 250 --out "$out" "$@"
