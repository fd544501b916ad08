#!/usr/bin/env bash
# The capacity benchmark on a bigger machine (a 16-core GPU machine with nothing reachable outside):
# roles pinned to separate cores, results under $OUT, within ten minutes.
#
#   benchmarks/device_capacity.sh prepare   # here, with the network: wheels into build/device-wheels
#   benchmarks/device_capacity.sh run       # there: a venv from those wheels only, then the benchmarks
#
# `prepare` downloads binary wheels for CPython 3.11 on manylinux x86_64 (DEVICE_PYTHONS="3.11 3.12" for
# both: about 73 MB, over what a device run carries) of: Offload's runtime dependencies and the simulator's (read from pyproject.toml)
# less the gRPC door's and the OTLP exporter (unused by `gateway serve` with those off),
# plus uvloop and httptools, granian, and vllm-router, into build/device-wheels/ (gitignored with build/;
# under the 64 MiB a device run carries). The generated gRPC code is gitignored too; the gateway
# imports it only when the gRPC door is on (off here). The device run carries build/device-wheels:
#   run(command="bash benchmarks/device_capacity.sh run", carry=["build/device-wheels"], timeout_s=600)
# Knobs (environment): CAPACITY_ARGS and SERVERS_ARGS (extra options for python -m benchmarks.capacity
# and benchmarks.capacity_servers), SKIP_SERVERS=1
# (skip the low-concurrency uvicorn/granian comparison), DEVICE_BUDGET_S (default 540).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELS=${DEVICE_WHEELS:-$ROOT/build/device-wheels}
OUT=${OUT:-$ROOT/build/device-out}
BUDGET=${DEVICE_BUDGET_S:-540}
EXTRA=(uvloop httptools granian vllm-router)

requirements() {
    # Offload's dependencies and the simulator extra, as pyproject.toml lists them, plus the extras.
    "$1" - "$ROOT/pyproject.toml" "${EXTRA[@]}" <<'PY'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
# Not imported by `gateway serve` with the gRPC door and tracing export off, nor by the benchmarks.
unused = {"grpcio", "grpcio-health-checking", "grpcio-reflection", "protobuf",
          "opentelemetry-exporter-otlp-proto-http"}
for line in [*project["dependencies"], *project["optional-dependencies"]["sim"], *sys.argv[2:]]:
    if re.split(r"[<>=!~\[ ;]", line, maxsplit=1)[0] not in unused:
        print(line)
PY
}

prepare() {
    local python=${PYTHON:-python3}
    mkdir -p "$WHEELS"
    requirements "$python" >"$WHEELS/requirements.txt"
    for version in ${DEVICE_PYTHONS:-3.11}; do
        "$python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
            --python-version "$version" --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform linux_x86_64 \
            --dest "$WHEELS" -r "$WHEELS/requirements.txt"
    done
    echo "device wheels: $(find "$WHEELS" -name '*.whl' | wc -l) files, $(du -sh "$WHEELS" | cut -f1) in $WHEELS"
}

run() {
    local started=$SECONDS
    local python
    python=$(command -v python3.11 || command -v python3)
    echo "device: $(nproc) cores, $("$python" --version), $(uname -m)"
    test -f "$WHEELS/requirements.txt" || { echo "no wheels in $WHEELS: run '$0 prepare' first"; exit 2; }
    mkdir -p "$OUT"
    local venv=${DEVICE_VENV:-/tmp/offload-device-venv}
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
        --find-links "$WHEELS" -r "$WHEELS/requirements.txt"
    # vllm-router where benchmarks.peers looks for it, with the marker that says it is installed.
    local peers=$venv/peers
    export OFFLOAD_PEERS_DIR=$peers
    if [ ! -f "$peers/vllm-router/.offload-peer.json" ]; then
        "$python" -m venv "$peers/vllm-router"
        "$peers/vllm-router/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
            --find-links "$WHEELS" vllm-router
        "$peers/vllm-router/bin/python" - "$peers/vllm-router/.offload-peer.json" <<'PY'
import importlib.metadata as m, json, sys
json.dump({"requirements": ["vllm-router"], "versions": {"vllm-router": m.version("vllm-router")}}, open(sys.argv[1], "w"))
PY
    fi
    echo "installed in $((SECONDS - started)) s"
    cd "$ROOT"
    export PYTHONPATH=$ROOT
    local left=$((BUDGET - (SECONDS - started)))
    # shellcheck disable=SC2086  # CAPACITY_ARGS is a list of options
    timeout --signal=TERM --kill-after=20 "$((left - 120))" \
        "$venv/bin/python" -m benchmarks.capacity --out capacity-device --out-dir "$OUT" ${CAPACITY_ARGS:-} \
        2>&1 | tee "$OUT/capacity-device.log" || echo "capacity benchmark ended with status $?"
    if [ "${SKIP_SERVERS:-0}" != 1 ]; then
        left=$((BUDGET - (SECONDS - started)))
        if [ "$left" -gt 100 ]; then
            # shellcheck disable=SC2086  # SERVERS_ARGS is a list of options
            timeout --signal=TERM --kill-after=20 "$((left - 10))" \
                taskset -c "$(seq -s, 0 $(($(nproc) / 2 - 1)))" \
                "$venv/bin/python" -m benchmarks.capacity_servers --quick --out servers-device --out-dir "$OUT" ${SERVERS_ARGS:-} \
                2>&1 | tee "$OUT/servers-device.log" || echo "server comparison ended with status $?"
        else
            echo "no time left for the server comparison ($left s)"
        fi
    fi
    echo "done in $((SECONDS - started)) s; results in $OUT"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
