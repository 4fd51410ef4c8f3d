#!/usr/bin/env bash
# `make test`: the main suite, then the SGLang tier, in the least wall time this
# 2-core machine gives without changing what either runs.
#
# - The main suite runs on RFORK_TEST_WORKERS pytest-xdist workers (default 2).
#   Most of its time is fleets of processes waiting on each other, on rate caps
#   and on windows of time, so two workers finish it in about 0.7 of one's time.
# - .venv-sglang (minutes of pip on a fresh machine) builds in the background
#   meanwhile. Its output is shown when it ends; a failed build fails the run.
#   .venv was prepared first, so every apt package is installed by then and the
#   two never race for apt's lock.
# - Ctrl-C or a failure stops the background build with its pip.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
SGLANG_VENV=${SGLANG_VENV:-.venv-sglang}
WORKERS=${RFORK_TEST_WORKERS:-2}
if ! [[ "$WORKERS" =~ ^[1-9][0-9]*$ ]]; then
    echo "run_tests: RFORK_TEST_WORKERS='$WORKERS' is not a whole number >= 1 (unset it for the default, 2)" >&2
    exit 2
fi

sglang_log=$(mktemp)
builder=""
cleanup() {
    if [ -n "$builder" ] && kill -0 "$builder" 2>/dev/null; then
        pkill -TERM -P "$builder" 2>/dev/null || true
        kill -TERM "$builder" 2>/dev/null || true
        wait "$builder" 2>/dev/null || true
    fi
    rm -f "$sglang_log"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

SGLANG_VENV=$SGLANG_VENV ./scripts/bootstrap_sglang.sh >"$sglang_log" 2>&1 &
builder=$!

workers=()
if [ "$WORKERS" -gt 1 ]; then workers=(-n "$WORKERS" --dist worksteal); fi
"$VENV/bin/python" -m pytest tests -q "${workers[@]}"

build_status=0
wait "$builder" || build_status=$?
builder=""
cat "$sglang_log"
if [ "$build_status" != 0 ]; then
    echo "run_tests: building $SGLANG_VENV failed (exit $build_status); its output is above" >&2
    exit "$build_status"
fi
"$SGLANG_VENV/bin/python" -m pytest tests/sglang -q
