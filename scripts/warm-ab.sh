#!/usr/bin/env bash
# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# The warm path under two configurations, side by side: for each, a backend and a node
# daemon of its own started with the flags given, the same function (`wordcount` over a
# 19-byte input, `warm_input` set) with -v parked VMs; closed-loop rounds of -d with -c
# clients alternating between the two (-r rounds each), then each configuration's CPU per
# invocation — the node daemon's and the backend's, from /proc/PID/stat over the rounds —
# and the daemon's threads.
#
#   cargo build --release --workspace --bin nexus-backend --example nexus-vmm --example nexus-load
#   scripts/warm-ab.sh [-c 1] [-v 10] [-d 5s] [-r 3] [-p lru|mru] -- \
#       LABEL_A "NODE FLAGS A" "BACKEND FLAGS A"  LABEL_B "NODE FLAGS B" "BACKEND FLAGS B"
#
# e.g. scripts/warm-ab.sh -- pool "--vcpu-threads pool" "" own "--vcpu-threads own" ""
#
# Everything it starts is killed on exit and bounded by `timeout`; logs go to a temporary
# directory it prints.
set -euo pipefail

clients=1
vms=10
duration=5s
rounds=3
pick=lru
usage="usage: $0 [-c CLIENTS] [-v PARKED_VMS] [-d DURATION] [-r ROUNDS] [-p lru|mru] -- LABEL_A NODE_FLAGS_A BACKEND_FLAGS_A LABEL_B NODE_FLAGS_B BACKEND_FLAGS_B"
while getopts "c:v:d:r:p:" opt; do
    case $opt in
        c) clients=$OPTARG ;;
        v) vms=$OPTARG ;;
        d) duration=$OPTARG ;;
        r) rounds=$OPTARG ;;
        p) pick=$OPTARG ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 6 ] || { echo "$usage" >&2; exit 2; }
labels=("$1" "$4")
declare -A node_flags backend_flags
node_flags[$1]=$2
backend_flags[$1]=$3
node_flags[$4]=$5
backend_flags[$4]=$6
[ "$1" != "$4" ] || { echo "the two labels must differ" >&2; exit 2; }

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
need_release_binaries
make_workdir warm-ab
cat > "$dir/fns/wordcount.toml" <<FN
guest = "wordcount"
memory_mib = 32
window_mib = 8
warm_input = "warm up the pages"
[limits]
max_vms = $vms
keep_alive_s = 3600
FN

declare -A port node_launcher backend_launcher node_pid backend_pid
base=$((19400 + RANDOM % 400))
i=0
for label in "${labels[@]}"; do
    port[$label]=$((base + i))
    i=$((i + 1))
    # shellcheck disable=SC2086 # the flags are words
    start_backend "$dir/b-$label.sock" "$dir/backend-$label.log" ${backend_flags[$label]}
    backend_launcher[$label]=$launched
    # shellcheck disable=SC2086
    start_node "${port[$label]}" "$dir/serve-$label.log" --backend "$dir/b-$label.sock" \
        --state-dir "$dir/state-$label" --prepare --pick "$pick" ${node_flags[$label]}
    node_launcher[$label]=$launched
done
for label in "${labels[@]}"; do
    wait_ready "${port[$label]}" "$dir/serve-$label.log"
    curl -sf -X POST "http://127.0.0.1:${port[$label]}/v1/functions/wordcount/warm" \
        -d "{\"count\":$vms}" > /dev/null
    # The processes themselves, not their `timeout`.
    node_pid[$label]=$(pgrep -P "${node_launcher[$label]}")
    backend_pid[$label]=$(pgrep -P "${backend_launcher[$label]}")
done

hz=$(getconf CLK_TCK)
declare -A node_cpu backend_cpu invocations
for label in "${labels[@]}"; do node_cpu[$label]=0; backend_cpu[$label]=0; invocations[$label]=0; done
echo "# wordcount over 19 bytes (warm_input set), $vms parked VMs per daemon, pick $pick, $clients client(s), $duration per round"
for label in "${labels[@]}"; do
    echo "# $label: node flags '${node_flags[$label]}', backend flags '${backend_flags[$label]}'"
done
for round in $(seq 1 "$rounds"); do
    for label in "${labels[@]}"; do
        out="$dir/run-$label-$round.txt"
        n0=$(ticks "${node_pid[$label]}")
        b0=$(ticks "${backend_pid[$label]}")
        timeout 600 "$tree/target/release/examples/nexus-load" run \
            --url "http://127.0.0.1:${port[$label]}" --function wordcount \
            --input-key inputs/small.txt -c "$clients" -d "$duration" > "$out" 2>/dev/null
        n1=$(ticks "${node_pid[$label]}")
        b1=$(ticks "${backend_pid[$label]}")
        n=$(awk '/cold starts/ { gsub(/[(,]/, " "); for (i = 1; i <= NF; i++) if ($i == "warm)") print $(i - 1) }' "$out")
        node_cpu[$label]=$(( ${node_cpu[$label]} + n1 - n0 ))
        backend_cpu[$label]=$(( ${backend_cpu[$label]} + b1 - b0 ))
        invocations[$label]=$(( ${invocations[$label]} + ${n:-0} ))
        echo "== round $round, $label: $(grep -E 'throughput' "$out" | sed 's/  */ /g'); $(grep -E 'p50 /' "$out" | sed 's/  */ /g'); $(grep -E 'VM exits' "$out" | sed 's/  */ /g')"
    done
done
for label in "${labels[@]}"; do
    threads=$(ls "/proc/${node_pid[$label]}/task" | wc -l)
    ours=$(cat /proc/"${node_pid[$label]}"/task/*/comm | grep -cv '^kvm-' || true)
    python3 -c "
n = max(${invocations[$label]}, 1)
print(f'$label: CPU per invocation: node daemon {${node_cpu[$label]} / $hz / n * 1e6:.1f} us, backend {${backend_cpu[$label]} / $hz / n * 1e6:.1f} us, over ${invocations[$label]} invocations; daemon threads {$threads} ({$ours} not KVM\'s)')"
done
