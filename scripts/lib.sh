# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# What the benchmark scripts share; sourced, not run. Every process started through it is
# bounded by `timeout`, its pid kept in `pids` and killed when the script exits.

# The source tree (the scripts' parent directory).
tree=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Fails, saying how to build them, unless the release binaries the scripts run are there.
need_release_binaries() {
    local bin
    for bin in target/release/nexus-backend target/release/examples/nexus-vmm \
        target/release/examples/nexus-load; do
        [ -x "$tree/$bin" ] || { echo "$tree/$bin is missing: build it first (see the header)" >&2; exit 1; }
    done
}

# make_workdir NAME: a new temporary directory in `dir` (printed), with a store holding
# inputs/small.txt (19 bytes) and an empty functions directory fns/.
make_workdir() {
    dir=$(mktemp -d "/tmp/nexus-$1.XXXXXX")
    echo "logs: $dir" >&2
    mkdir -p "$dir/store/inputs" "$dir/fns"
    printf 'the quick brown fox jumps over the lazy dog\n' | head -c 19 > "$dir/store/inputs/small.txt"
}

pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# start_backend SOCKET LOG [FLAGS…]: a backend over $dir/store, waited for until its socket
# exists; its `timeout`'s pid in `launched`.
start_backend() {
    local socket=$1 log=$2
    shift 2
    timeout 3600 "$tree/target/release/nexus-backend" --listen "$socket" \
        --store "file://$dir/store" "$@" > "$log" 2>&1 &
    launched=$!
    pids+=("$launched")
    for _ in $(seq 1 100); do [ -S "$socket" ] && break; sleep 0.1; done
}

# start_node PORT LOG [FLAGS…]: `nexus-vmm serve` on 127.0.0.1:PORT with the functions of
# $dir/fns (not waited for: see wait_ready); its `timeout`'s pid in `launched`.
start_node() {
    local port=$1 log=$2
    shift 2
    timeout 3600 "$tree/target/release/examples/nexus-vmm" serve \
        --listen "127.0.0.1:$port" --functions "$dir/fns" "$@" > "$log" 2>&1 &
    launched=$!
    pids+=("$launched")
}

# wait_ready PORT LOG: waits (at most 300 s) for the node's /readyz — up, its backend
# reached and, with --prepare, its snapshots taken — else fails naming LOG.
wait_ready() {
    for _ in $(seq 1 3000); do
        curl -sf "http://127.0.0.1:$1/readyz" > /dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "the daemon did not start: $2" >&2
    exit 1
}

# ticks PID: user plus system CPU ticks of the process so far.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
