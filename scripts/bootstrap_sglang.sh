#!/usr/bin/env bash
# Create or refresh .venv-sglang: SGLang 0.5.23's real code on CPU plus rfork,
# for the tests in tests/sglang (`make test-sglang`). A SEPARATE venv from .venv
# because SGLang pins transformers/tokenizers and needs the real triton, which
# the main suite should not depend on.
#
# Idempotent and fast when nothing changed: a stamp file records the hash of
# the inputs that matter. What SGLang needs on a CPU-only machine, and why:
# docs/testing.md ("The SGLang tier").
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${SGLANG_VENV:-.venv-sglang}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
SGLANG_SPEC=${SGLANG_SPEC:-sglang==0.5.23}

# What SGLang's loader, plugin framework, bootstrap server and metrics collector
# import on CPU. No sgl-kernel, flashinfer or CUDA. No torchvision: every PyPI
# wheel is a CUDA build that breaks beside CPU torch, and transformers imports
# it when present.
SGLANG_DEPS=(
    numpy orjson psutil pybase64 requests packaging pillow starlette msgspec pydantic pyzmq tqdm ipython
    aiohttp triton huggingface-hub fastapi uvicorn prometheus-client
    transformers==5.19.0 tokenizers==0.23.2 dill apache-tvm-ffi==0.1.11 sentencepiece==0.2.1
    compressed-tensors==0.18.0 gguf
)

# Mooncake's wheel links against libibverbs/librdmacm even for TCP.
source scripts/ensure_rdma_libs.sh

stamp_input="$(cat pyproject.toml scripts/bootstrap_sglang.sh) $TORCH_SPEC $SGLANG_SPEC $($PYTHON --version 2>&1)"
stamp_hash=$(printf '%s' "$stamp_input" | sha256sum | cut -c1-16)
stamp="$VENV/.rfork-sglang-installed-$stamp_hash"
# find_spec, not import: importing SGLang takes seconds, and this runs on every `make test`.
if [ -f "$stamp" ] && "$VENV/bin/python" -c "import importlib.util as u, sys
sys.exit(not all(u.find_spec(m) for m in ('rfork_agent', 'mooncake', 'torch', 'sglang', 'pytest')))" 2>/dev/null; then
    exit 0
fi

echo "bootstrap-sglang: preparing $VENV ($TORCH_SPEC, $SGLANG_SPEC --no-deps, about 2.5 GB on a fresh machine)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
pip_log=$(mktemp)
trap 'rm -f "$pip_log"' EXIT
pip_install() {
    # sglang is installed --no-deps on purpose, so pip's resolver lists its whole
    # unmet requirement set after every later install; that list is not an error
    # here and would bury real ones. Everything else pip says is shown.
    local status=0
    "${PIP[@]}" "$@" >"$pip_log" 2>&1 || status=$?
    grep -v -e "^sglang [0-9.]* requires " -e "dependency resolver does not currently take into account" \
        -e "following dependency conflicts" -e "is ignored: it is neither a file nor a directory" "$pip_log" >&2 || true
    return "$status"
}
# Every later install runs under this constraints file: without it, a dependency
# asking for 'torch' could swap the CPU build for a multi-GB CUDA one.
constraints="$VENV/constraints.txt"
printf '%s\n%s\n' "$TORCH_SPEC" "$SGLANG_SPEC" > "$constraints"
pip_install -c "$constraints" "$TORCH_SPEC"
pip_install -c "$constraints" --no-deps "$SGLANG_SPEC"
pip_install -c "$constraints" "${SGLANG_DEPS[@]}"
# rfork itself, editable, then its own dependencies (the non-CUDA transport:
# these tests run on CPU) through the same constraints.
pip_install -c "$constraints" --no-deps -e .
pip_install -c "$constraints" -e ".[cpu,test]"
if "$VENV/bin/python" -c "import torchvision" 2>/dev/null; then
    echo "bootstrap-sglang: torchvision got installed; removing it (a CUDA build that breaks CPU torch imports)"
    "$VENV/bin/python" -m pip uninstall --quiet -y torchvision
fi
"$VENV/bin/python" -c "import rfork_agent, mooncake.engine, torch, sglang.srt.plugins" || {
    echo "bootstrap-sglang: $VENV was installed but does not import; see the errors above" >&2
    exit 1
}
rm -f "$VENV"/.rfork-sglang-installed-*
touch "$stamp"
echo "bootstrap-sglang: $VENV ready"
