#!/usr/bin/env bash
# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Per-invocation isolation against reuse, side by side in one node: `wordcount` over a
# 19-byte input, once with `isolation = "reuse"` and once with `isolation = "reset"`, each
# with a warm pool of -v parked VMs, closed loop with -c clients for -d, alternating -r
# rounds (reuse, reset, reuse, reset, …) so that both see the same machine. Prints each
# round's `nexus-load run` summary line, the reset histogram's mean and the reset's parts
# (medians of the daemon's per-reset debug lines).
#
#   cargo build --release --workspace --bin nexus-backend --example nexus-vmm --example nexus-load
#   scripts/reset-vs-reuse.sh [-c 1] [-v 2] [-d 10s] [-r 2] [-t pool|own]
#
# Everything it starts is killed on exit and bounded by `timeout`; logs go to a temporary
# directory it prints.
set -euo pipefail

clients=1
vms=2
duration=10s
rounds=2
vcpu_threads=pool
while getopts "c:v:d:r:t:" opt; do
    case $opt in
        c) clients=$OPTARG ;;
        v) vms=$OPTARG ;;
        d) duration=$OPTARG ;;
        r) rounds=$OPTARG ;;
        t) vcpu_threads=$OPTARG ;;
        *) echo "usage: $0 [-c CLIENTS] [-v PARKED_VMS] [-d DURATION] [-r ROUNDS] [-t pool|own]" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
need_release_binaries
make_workdir reset-vs-reuse
for isolation in reuse reset; do
    cat > "$dir/fns/wc-$isolation.toml" <<EOF
guest = "wordcount"
memory_mib = 32
window_mib = 8
isolation = "$isolation"
[limits]
max_vms = $vms
keep_alive_s = 3600
EOF
done

port=$((18900 + RANDOM % 500))
start_backend "$dir/b.sock" "$dir/backend.log"
RUST_LOG=nexus_vmm=debug,info start_node "$port" "$dir/serve.log" --backend "$dir/b.sock" \
    --state-dir "$dir/state" --prepare --vcpu-threads "$vcpu_threads"
wait_ready "$port" "$dir/serve.log"
for isolation in reuse reset; do
    curl -sf -X POST "http://127.0.0.1:$port/v1/functions/wc-$isolation/warm" \
        -d "{\"count\":$vms}" > /dev/null
done

echo "# wordcount over 19 bytes, $vms parked VMs each, $clients client(s), $duration per round, vCPU threads $vcpu_threads"
for round in $(seq 1 "$rounds"); do
    for isolation in reuse reset; do
        out="$dir/run-$isolation-$round.txt"
        timeout 600 "$tree/target/release/examples/nexus-load" run \
            --url "http://127.0.0.1:$port" --function "wc-$isolation" \
            --input-key inputs/small.txt -c "$clients" -d "$duration" > "$out" 2>/dev/null
        echo "== round $round, $isolation"
        grep -iE "throughput|latency|p50|exits|cold" "$out" | head -8
    done
done

metric() { curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
sum=$(metric nexus_vm_reset_duration_seconds_sum); count=$(metric nexus_vm_reset_duration_seconds_count)
python3 -c "print(f'resets: {int(float($count))}, mean {float($sum) / max(float($count), 1) * 1e6:.0f} us (histogram)')"
python3 - "$dir/serve.log" <<'PY'
import re, statistics, sys
parts = {}
for line in open(sys.argv[1], errors="replace"):
    m = re.search(r"reset in (\d+) us: (.*)", line)
    if not m:
        continue
    parts.setdefault("total", []).append(int(m.group(1)))
    for name, value in re.findall(r"([a-z ]+?) (\d+)(?: \(|,|$)", m.group(2)):
        parts.setdefault(name.strip(), []).append(int(value))
for name, values in parts.items():
    values.sort()
    p90 = values[int(len(values) * 0.9)] if values else 0
    print(f"{name}: median {statistics.median(values):.0f} us, p90 {p90} us ({len(values)} resets)")
PY
