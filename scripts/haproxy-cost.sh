#!/usr/bin/env bash
# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# What HAProxy (deploy/haproxy/haproxy.cfg) adds per invocation: one backend, one node, and
# HAProxy in front of it; closed-loop rounds of -d with -c clients (each with a keep-alive
# connection), alternating -r times between the node directly and through HAProxy, on
# `wordcount` over a 19-byte input with -v parked VMs. Prints each round's throughput and
# latency, and HAProxy's CPU per invocation (from /proc/PID/stat over its rounds).
#
#   cargo build --release --workspace --bin nexus-backend --example nexus-vmm --example nexus-load
#   scripts/haproxy-cost.sh [-c 1] [-v 4] [-d 5s] [-r 3]
#
# Everything it starts is killed on exit and bounded by `timeout`; logs go to a temporary
# directory it prints.
set -euo pipefail

clients=1
vms=4
duration=5s
rounds=3
while getopts "c:v:d:r:" opt; do
    case $opt in
        c) clients=$OPTARG ;;
        v) vms=$OPTARG ;;
        d) duration=$OPTARG ;;
        r) rounds=$OPTARG ;;
        *) echo "usage: $0 [-c CLIENTS] [-v PARKED_VMS] [-d DURATION] [-r ROUNDS]" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
need_release_binaries
command -v haproxy > /dev/null || { echo "haproxy is not installed (apt-get install haproxy)" >&2; exit 1; }

make_workdir haproxy-cost
cat > "$dir/fns/wordcount.toml" <<EOF
guest = "wordcount"
memory_mib = 32
window_mib = 8
warm_input = "warm up the pages"
[limits]
max_vms = $vms
keep_alive_s = 3600
EOF

base=$((19800 + RANDOM % 100 * 3))
node=127.0.0.1:$base
front=127.0.0.1:$((base + 1))
stats=127.0.0.1:$((base + 2))
start_backend "$dir/b.sock" "$dir/backend.log"
start_node "$base" "$dir/serve.log" --backend "$dir/b.sock" --state-dir "$dir/state" --prepare
wait_ready "$base" "$dir/serve.log"
curl -sf -X POST "http://$node/v1/functions/wordcount/warm" -d "{\"count\":$vms}" > /dev/null
NEXUS_LISTEN=$front NEXUS_NODE1=$node NEXUS_STATS_LISTEN=$stats \
    timeout 3600 haproxy -f "$tree/deploy/haproxy/haproxy.cfg" -db > "$dir/haproxy.log" 2>&1 &
launcher=$!
pids+=("$launcher")
for _ in $(seq 1 100); do curl -sf "http://$front/readyz" > /dev/null 2>&1 && break; sleep 0.1; done
sleep 3 # the node's health checks pass (rise)
haproxy_pid=$(pgrep -P "$launcher")

hz=$(getconf CLK_TCK)
cpu=0
invocations=0
echo "# wordcount over 19 bytes, $vms parked VMs, $clients client(s) with keep-alive connections, $duration per round"
for round in $(seq 1 "$rounds"); do
    for path in direct haproxy; do
        url=http://$node
        [ "$path" = haproxy ] && url=http://$front
        out="$dir/run-$path-$round.txt"
        t0=$(ticks "$haproxy_pid")
        timeout 600 "$tree/target/release/examples/nexus-load" run --url "$url" \
            --function wordcount --input-key inputs/small.txt -c "$clients" -d "$duration" \
            > "$out" 2>/dev/null
        t1=$(ticks "$haproxy_pid")
        n=$(awk '/cold starts/ { gsub(/[(,]/, " "); for (i = 1; i <= NF; i++) if ($i == "warm)") print $(i - 1) }' "$out")
        if [ "$path" = haproxy ]; then
            cpu=$((cpu + t1 - t0))
            invocations=$((invocations + ${n:-0}))
        fi
        echo "== round $round, $path: $(grep -E 'throughput' "$out" | sed 's/  */ /g'); $(grep -E 'p50 /' "$out" | sed 's/  */ /g')"
    done
done
python3 -c "print(f'HAProxy CPU: {$cpu / $hz / max($invocations, 1) * 1e6:.1f} us per invocation over $invocations invocations')"
