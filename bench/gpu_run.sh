#!/usr/bin/env bash
# Issue #7 in one device call: install the carried wheels, check the machine, run bench/gpu_run.py.
#
#   device run, carry ["gpu_wheels"]:  bash bench/gpu_run.sh [fork,cpu,big,split,qos]
#
# gpu_wheels/ (git-ignored; scripts/gpu_wheels.py fills it) holds mooncake-transfer-engine-cuda13
# for Python 3.12 and the rfork deps the GPU image lacks (fastapi, starlette, pydantic, uvicorn,
# apscheduler, ...). Results land in $OUT (the device tool's folder; out/gpu here).
set -uo pipefail
OUT=${OUT:-out/gpu}
PARTS=${1:-fork,cpu,big,split,qos}
mkdir -p "$OUT"
SITE=/tmp/rfork-site
# NVLink multicast stays off on the shared GPU hosts (KINDS.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 GLOG_minloglevel=2

echo "== $(date -u) on $(hostname): $(nproc) cores"
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader || true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" gpu_wheels/*.whl \
  || { echo "pip install of gpu_wheels failed"; exit 1; }
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip list 2>/dev/null | grep -i -E '^(fastapi|starlette|uvicorn|httpx|pydantic|apscheduler|prometheus|tqdm|matplotlib|torch|mooncake|numpy|aiohttp|requests|msgpack) '
python3 -c 'import fastapi, uvicorn, httpx, pydantic, apscheduler, prometheus_client, tqdm, matplotlib, torch; print("deps ok:", torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), "x", torch.cuda.device_count())' \
  || { echo "missing Python deps (see above)"; exit 1; }
# Mooncake's CUDA build links libcudart & co.; torch's nvidia wheels carry them if the image's loader path does not.
if ldd "$SITE/mooncake/engine.so" | grep -q "not found"; then
  NVLIBS=$(python3 -c 'import nvidia, os; print(":".join(os.path.join(r, d) for p in nvidia.__path__ for r, ds, _ in os.walk(p) for d in ds if d == "lib"))')
  export LD_LIBRARY_PATH="$NVLIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "engine.so still misses:"; ldd "$SITE/mooncake/engine.so" | grep "not found"
fi
python3 -c 'import torch; from mooncake.engine import TransferEngine; print("mooncake ok")' || exit 1
shift || true
python3 -m bench.gpu_run --out "$OUT" --parts "$PARTS" "$@" 2>&1 | tee "$OUT/gpu-run.log"
