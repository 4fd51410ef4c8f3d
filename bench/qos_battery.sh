#!/usr/bin/env bash
# Issue #16's QoS battery in one device call: install the carried wheels, then run bench/qos_battery.py.
#
#   device run, carry ["gpu_wheels"]:
#     bash bench/qos_battery.sh --plants steady,bursty,near-slo,load-change --runs 5 --cores-per-plant 3 --gpu
#
# gpu_wheels/ (git-ignored) holds what the device image lacks (see bench/gpu_run.sh): mooncake-transfer-engine
# and fastapi, starlette, pydantic, uvicorn, apscheduler, ... Results land in $OUT (<= 8 files, flat).
set -uo pipefail
OUT=${OUT:-out/qos-battery}
mkdir -p "$OUT"
SITE=/tmp/rfork-site
# NVLink multicast stays off on the shared GPU hosts (KINDS.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 GLOG_minloglevel=2
echo "== $(date -u) on $(hostname): $(nproc) cores"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null || true
if ls gpu_wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" gpu_wheels/*.whl \
    || { echo "pip install of gpu_wheels failed"; exit 1; }
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  # Mooncake's CUDA build links libcudart & co.; torch's nvidia wheels carry them if the loader path does not.
  if ldd "$SITE/mooncake/engine.so" 2>/dev/null | grep -q "not found"; then
    NVLIBS=$(python3 -c 'import nvidia, os; print(":".join(os.path.join(r, d) for p in nvidia.__path__ for r, ds, _ in os.walk(p) for d in ds if d == "lib"))')
    export LD_LIBRARY_PATH="$NVLIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c 'import fastapi, uvicorn, httpx, apscheduler, prometheus_client, matplotlib, torch; from mooncake.engine import TransferEngine; print("deps ok:", torch.__version__)' \
  || { echo "missing Python deps (carry gpu_wheels)"; exit 1; }
python3 -m bench.qos_battery --out "$OUT" "$@"
