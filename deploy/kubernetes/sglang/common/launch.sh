#!/bin/sh
# Start SGLang as an rfork fleet member: always a seed (SGLang registers its weights with
# its TransferEngine, and the rfork agent beside it serves them), and a fork client when
# another instance already serves: then every rank loads through rfork's SGLang plugin
# from all matching seeds, with RFORK_SEEDS_HOST as SGLang's own fallback seed.
# The first instance of a fleet (no serving seed yet) loads from storage as usual.
#
#   launch.sh [sglang.launch_server arguments...]
# Environment: RFORK_SEEDS_HOST (a Service whose endpoints are serving instances),
# RFORK_SEEDS_PORT (default 30000); the plugin's RFORK_* variables.
set -eu
seeds_host="${RFORK_SEEDS_HOST:?set RFORK_SEEDS_HOST to the Service of serving instances}"
seeds_port="${RFORK_SEEDS_PORT:-30000}"
if python3 - "$seeds_host" "$seeds_port" <<'PY'
import sys
import urllib.request

host, port = sys.argv[1], sys.argv[2]
try:
    urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5).close()
except Exception as exc:  # no serving seed: any failure means "load from storage"
    print(f"rfork launch: no serving seed at {host}:{port} ({exc}); loading weights from storage", file=sys.stderr)
    sys.exit(1)
PY
then
    echo "rfork launch: forking weights from the fleet (SGLang's fallback seed: $seeds_host:$seeds_port)" >&2
    set -- "$@" --load-format remote_instance --remote-instance-weight-loader-backend transfer_engine \
        --remote-instance-weight-loader-seed-instance-ip "$seeds_host" \
        --remote-instance-weight-loader-seed-instance-service-port "$seeds_port"
fi
exec python3 -m sglang.launch_server "$@" --remote-instance-weight-loader-start-seed-via-transfer-engine
