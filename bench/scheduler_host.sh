#!/usr/bin/env bash
# `rfork bench scheduler --scale-out` on a bigger host (a device machine: 16+ cores), with and without
# HTTP front ends, each setting RUNS times. Installs the carried wheels as bench/gpu_run.sh does.
#
#   device run, carry ["gpu_wheels"]:  bash bench/scheduler_host.sh [MEMBERS] [FRONT_ENDS] [RUNS]
#   e.g. bash bench/scheduler_host.sh 1024 0,2,4 2
#   a TP8 fleet, one decider per rank:  BENCH_ARGS="--ranks 8 --scheduler-arg=--deciders=8" bash bench/scheduler_host.sh 1024 4 3
#
# Results: $OUT/scheduler-scale-out-<members>-fe<N>-<run>.json and scheduler-host.log.
set -uo pipefail
OUT=${OUT:-out/scheduler-host}
MEMBERS=${1:-1024}
FRONT_ENDS=${2:-0,2,4}
RUNS=${3:-2}
read -r -a EXTRA <<< "${BENCH_ARGS:-}"
mkdir -p "$OUT"
SITE=/tmp/rfork-site
export PYTHONUNBUFFERED=1
echo "== $(date -u) on $(hostname): $(nproc) cores, $(python3 --version)" | tee "$OUT/scheduler-host.log"
if ! python3 -c 'import fastapi, uvicorn, httpx, pydantic, apscheduler, prometheus_client' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" gpu_wheels/*.whl \
    || { echo "pip install of gpu_wheels failed"; exit 1; }
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
for run in $(seq 1 "$RUNS"); do
  for fe in ${FRONT_ENDS//,/ }; do
    python3 -m rfork_agent.cli bench scheduler --scale-out "$MEMBERS" --scheduler-arg=--front-ends="$fe" "${EXTRA[@]}" \
      --json "$OUT/scheduler-scale-out-$MEMBERS-fe$fe-$run.json" 2>&1 | grep -v "^wrote" | tee -a "$OUT/scheduler-host.log"
  done
done
