#!/usr/bin/env bash
# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# The warm path with vCPUs on the pool against vCPUs on threads of their own, side by side:
# one backend, two node daemons (`--vcpu-threads pool` and `own`) with the same function
# (`wordcount` over a 19-byte input) and -v parked VMs each, closed-loop rounds of -d with
# -c clients alternating between them (-r rounds each), then the daemons' CPU per
# invocation (from /proc/PID/stat over the rounds) and their threads.
#
#   cargo build --release --workspace --bin nexus-backend --example nexus-vmm --example nexus-load
#   scripts/vcpu-threads-ab.sh [-c 1] [-v 10] [-d 5s] [-r 3] [-p lru|mru]
#
# Everything it starts is killed on exit and bounded by `timeout`; logs go to a temporary
# directory it prints.
set -euo pipefail

clients=1
vms=10
duration=5s
rounds=3
pick=lru
while getopts "c:v:d:r:p:" opt; do
    case $opt in
        c) clients=$OPTARG ;;
        v) vms=$OPTARG ;;
        d) duration=$OPTARG ;;
        r) rounds=$OPTARG ;;
        p) pick=$OPTARG ;;
        *) echo "usage: $0 [-c CLIENTS] [-v PARKED_VMS] [-d DURATION] [-r ROUNDS] [-p lru|mru]" >&2; exit 2 ;;
    esac
done

tree=$(cd "$(dirname "$0")/.." && pwd)
for bin in target/release/nexus-backend target/release/examples/nexus-vmm \
    target/release/examples/nexus-load; do
    [ -x "$tree/$bin" ] || { echo "$tree/$bin is missing: build it first (see the header)" >&2; exit 1; }
done

dir=$(mktemp -d /tmp/nexus-vcpu-threads.XXXXXX)
echo "logs: $dir" >&2
mkdir -p "$dir/store/inputs" "$dir/fns"
printf 'the quick brown fox jumps over the lazy dog\n' | head -c 19 > "$dir/store/inputs/small.txt"
cat > "$dir/fns/wordcount.toml" <<EOF
guest = "wordcount"
memory_mib = 32
window_mib = 8
warm_input = "warm up the pages"
[limits]
max_vms = $vms
keep_alive_s = 3600
EOF

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

timeout 3600 "$tree/target/release/nexus-backend" --listen "$dir/b.sock" \
    --store "file://$dir/store" > "$dir/backend.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 100); do [ -S "$dir/b.sock" ] && break; sleep 0.1; done
declare -A port launcher pid
base=$((19400 + RANDOM % 400))
port[pool]=$base
port[own]=$((base + 1))
for mode in pool own; do
    timeout 3600 "$tree/target/release/examples/nexus-vmm" serve \
        --listen "127.0.0.1:${port[$mode]}" --backend "$dir/b.sock" --functions "$dir/fns" \
        --state-dir "$dir/state-$mode" --prepare --pick "$pick" --vcpu-threads "$mode" \
        > "$dir/serve-$mode.log" 2>&1 &
    pids+=("$!")
    launcher[$mode]=$!
done
for mode in pool own; do
    for _ in $(seq 1 3000); do
        curl -sf "http://127.0.0.1:${port[$mode]}/healthz" > /dev/null 2>&1 && break
        sleep 0.1
    done
    curl -sf -X POST "http://127.0.0.1:${port[$mode]}/v1/functions/wordcount/warm" \
        -d "{\"count\":$vms}" > /dev/null
    # The daemon itself, not its `timeout`.
    pid[$mode]=$(pgrep -P "${launcher[$mode]}")
done

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
declare -A cpu invocations
for mode in pool own; do cpu[$mode]=0; invocations[$mode]=0; done
echo "# wordcount over 19 bytes (warm_input set), $vms parked VMs per daemon, pick $pick, $clients client(s), $duration per round"
for round in $(seq 1 "$rounds"); do
    for mode in pool own; do
        out="$dir/run-$mode-$round.txt"
        t0=$(ticks "${pid[$mode]}")
        timeout 600 "$tree/target/release/examples/nexus-load" run \
            --url "http://127.0.0.1:${port[$mode]}" --function wordcount \
            --input-key inputs/small.txt -c "$clients" -d "$duration" > "$out" 2>/dev/null
        t1=$(ticks "${pid[$mode]}")
        n=$(awk '/cold starts/ { gsub(/[(,]/, " "); for (i = 1; i <= NF; i++) if ($i == "warm)") print $(i - 1) }' "$out")
        cpu[$mode]=$(( ${cpu[$mode]} + t1 - t0 ))
        invocations[$mode]=$(( ${invocations[$mode]} + ${n:-0} ))
        echo "== round $round, vCPU threads $mode: $(grep -E 'throughput' "$out" | sed 's/  */ /g'); $(grep -E 'p50 /' "$out" | sed 's/  */ /g'); $(grep -E 'VM exits' "$out" | sed 's/  */ /g')"
    done
done
for mode in pool own; do
    threads=$(ls "/proc/${pid[$mode]}/task" | wc -l)
    ours=$(cat /proc/"${pid[$mode]}"/task/*/comm | grep -cv '^kvm-' || true)
    python3 -c "print(f'vCPU threads $mode: daemon CPU {${cpu[$mode]} / $hz / max(${invocations[$mode]}, 1) * 1e6:.1f} us per invocation over ${invocations[$mode]} invocations; threads {$threads} ({$ours} not KVM\'s)')"
done
