#!/usr/bin/env bash
# Create or refresh .venv with everything rfork needs. Idempotent and fast when
# nothing changed: a stamp file records the hash of the inputs that matter.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

# Mooncake's wheel links against libibverbs/librdmacm even for TCP.
source scripts/ensure_rdma_libs.sh

# The metrics suite (tests/prometheus) runs a real Prometheus and promtool.
# Debian's package may auto-start a system service on :9090; that does not
# matter: the tests start their own instance on a free loopback port with its
# own storage dir. RFORK_SKIP_PROMETHEUS=1 skips the install.
if [ "${RFORK_SKIP_PROMETHEUS:-0}" != 1 ] && ! { command -v prometheus && command -v promtool; } >/dev/null 2>&1; then
    echo "bootstrap: installing Debian package: prometheus (brings promtool)"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
fi

# The Kubernetes manifest tests (tests/kubernetes) render deploy/kubernetes with
# `kubectl kustomize`: any kubectl works (Debian's kubernetes-client when none is
# installed). RFORK_SKIP_KUBECTL=1 skips the install.
if [ "${RFORK_SKIP_KUBECTL:-0}" != 1 ] && ! command -v kubectl >/dev/null 2>&1; then
    echo "bootstrap: installing Debian package: kubernetes-client (kubectl)"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends kubernetes-client
fi

# GPU machines take the CUDA build of the transport; CPU machines the non-CUDA one.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    EXTRA=${RFORK_TRANSPORT_EXTRA:-gpu}
else
    EXTRA=${RFORK_TRANSPORT_EXTRA:-cpu}
fi

stamp_input="$(cat pyproject.toml scripts/bootstrap.sh) $TORCH_SPEC $EXTRA $($PYTHON --version 2>&1)"
stamp_hash=$(printf '%s' "$stamp_input" | sha256sum | cut -c1-16)
stamp="$VENV/.rfork-installed-$stamp_hash"
if [ -f "$stamp" ] && "$VENV/bin/python" -c "import rfork_agent, mooncake.engine, torch" 2>/dev/null; then
    exit 0
fi

echo "bootstrap: preparing $VENV ($TORCH_SPEC, transport extra '$EXTRA')"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: an unpinned 'torch' requirement would pull a multi-GB CUDA build.
"${PIP[@]}" "$TORCH_SPEC"
echo "$TORCH_SPEC" > "$VENV/torch-constraint.txt"
"${PIP[@]}" -c "$VENV/torch-constraint.txt" -e ".[$EXTRA,test,plot]"
rm -f "$VENV"/.rfork-installed-*
touch "$stamp"
echo "bootstrap: $VENV ready"
