#!/usr/bin/env bash
# Issue #16's QoS battery on the device: install the carried wheels, then run bench/qos_battery.py.
#
#   device run, carry ["gpu_wheels"]:
#     bash bench/qos_battery.sh --plants steady,bursty,near-slo,load-change --runs 5 --cores-per-plant 3 --gpu
#
# The full battery (5 runs of 80 s throttled phases per plant, ~14 min; ~17 min with
# `-- --run-oracle-probes 2`) is longer than one 10-minute device call. Then start it detached (its own process session,
# which outlives the call) and collect it in the next calls, made at once (an idle machine is given
# back after ~30 s):
#     bash bench/qos_battery.sh --detach --gpu ...     # starts it, follows it for up to WAIT_SECONDS (570)
#     bash bench/qos_battery.sh --collect              # waits for it to end (up to WAIT_SECONDS), copies results;
#                                                      # exit 3: still running, call --collect again
# Detached, the call ends with $OUT/battery.tar.gz (every plant's JSON, the plots, the log) and the summary.
#
# The same set-up runs bench/piece_study.py (reads in pieces against whole reads, docs/qos.md), in one call:
#     bash bench/qos_battery.sh --piece-study --pieces 1MiB,1MiB:0.005 --rates 5MB/s,20MB/s --cycles 3 \
#         --deadline-seconds 540                   # $OUT/pieces.json, pieces.png, pieces.log
#
# gpu_wheels/ (git-ignored; scripts/gpu_wheels.py fills it) holds what the device image lacks: mooncake-transfer-engine
# and fastapi, starlette, pydantic, uvicorn, apscheduler, ...
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

DETACHED=/tmp/rfork-battery
WAIT_SECONDS=${WAIT_SECONDS:-570}

follow() {  # wait for the detached battery to end (or WAIT_SECONDS), then copy what it wrote to $OUT
  local waited=0
  while [ ! -e "$DETACHED/exit" ] && [ "$waited" -lt "$WAIT_SECONDS" ]; do sleep 10; waited=$((waited + 10)); done
  tail -n 40 "$DETACHED/log"
  # The device returns at most 8 files: everything in one archive, the summary and its plot beside it.
  tar -czf "$OUT/battery.tar.gz" -C "$DETACHED" out log host.log
  cp "$DETACHED"/out/qos-battery.json "$DETACHED"/out/qos-battery.png "$OUT"/ 2>/dev/null
  if [ -e "$DETACHED/exit" ]; then echo "== battery ended: exit $(cat "$DETACHED/exit")"; exit "$(cat "$DETACHED/exit")"; fi
  echo "== battery still running after ${WAIT_SECONDS}s: call again with --collect"
  exit 3
}

case "${1:-}" in
  --detach)
    shift
    rm -rf "$DETACHED" && mkdir -p "$DETACHED/out"
    # The host beside the battery, every 5 s until it ends: /proc/stat's cpu line (its 8th number is the time
    # a neighbour on the hypervisor took), the load average, the CPUs' mean MHz and the GPU's SM clock, temperature and power.
    # v12's seeds slowed 12-43 % at an unchanged busy share; this says whether steal, clocks or heat moved.
    setsid bash -c 'while [ ! -e "$0/exit" ]; do
        echo "t=$(date +%s) $(head -n1 /proc/stat) load=$(cut -d" " -f1-3 /proc/loadavg) mhz=$(awk "/cpu MHz/{s+=\$4;n++}END{if(n)printf \"%.0f\",s/n}" /proc/cpuinfo) gpu=$(nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader,nounits 2>/dev/null | head -n1 | tr -d " ")"
        sleep 5; done >> "$0/host.log" 2>/dev/null' "$DETACHED" < /dev/null &
    setsid bash -c 'python3 -m bench.qos_battery --out "$0/out" "$@" > "$0/log" 2>&1; echo $? > "$0/exit"' \
      "$DETACHED" "$@" < /dev/null &
    follow ;;
  --collect)
    [ -d "$DETACHED" ] || { echo "no detached battery on this machine (a fresh machine: start it again)"; exit 1; }
    follow ;;
  --piece-study)
    shift
    python3 -m bench.piece_study --json "$OUT/pieces.json" --plot "$OUT/pieces.png" "$@" 2>&1 | tee "$OUT/pieces.log" ;;
  *)
    python3 -m bench.qos_battery --out "$OUT" "$@" ;;
esac
