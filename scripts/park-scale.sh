#!/usr/bin/env bash
# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Parks growing pools of `wordcount` VMs in one node and measures each size: what
# `nexus-load park` reports (time to park, RSS and host MemAvailable per VM, warm p50/p99),
# plus descriptors, threads and mappings of the daemon and the backend per parked VM, and,
# at the last size, the idle CPU of both over a quiet period.
#
#   cargo build --release --workspace --bin nexus-backend --example nexus-vmm --example nexus-load
#   scripts/park-scale.sh [-p lru|mru] [-s 10,100,1000,4000] [-w] [-i 60] [-n 2000] [-m 32] [-t pool|own] [-W 60000]
#
# -w registers the function with `warm_input` (each parked VM runs one invocation before it
# counts as idle: docs/benchmarks.md). -t sets the daemon's --vcpu-threads (default pool), -W
# its --wait-timeout-ms (default 60000, the daemon's: each parked VM's WAIT times out once per
# period).
# Threads are counted twice: all of the process's, and without KVM's own worker per VM
# (`kvm-nx-lpage-recovery`, a kernel task listed among the process's threads). Everything it starts is killed on exit and bounded by
# `timeout`; logs and the reports go to a temporary directory it prints.
set -euo pipefail

pick=lru
sizes=10,100,1000,4000
warm_input=""
idle=60
invocations=2000
memory=32
vcpu_threads=pool
wait_ms=60000
while getopts "p:s:wi:n:m:t:W:" opt; do
    case $opt in
        p) pick=$OPTARG ;;
        s) sizes=$OPTARG ;;
        w) warm_input='warm_input = "warm up the pages"' ;;
        i) idle=$OPTARG ;;
        n) invocations=$OPTARG ;;
        m) memory=$OPTARG ;;
        t) vcpu_threads=$OPTARG ;;
        W) wait_ms=$OPTARG ;;
        *) echo "usage: $0 [-p lru|mru] [-s N,N,…] [-w] [-i IDLE_SECONDS] [-n INVOCATIONS] [-m RAM_MIB] [-t pool|own] [-W WAIT_TIMEOUT_MS]" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
need_release_binaries
make_workdir park-scale
# (its reports go there too)
printf 'the quick brown fox jumps\n' > "$dir/store/inputs/small.txt"
cat > "$dir/fns/wordcount.toml" <<EOF
guest = "wordcount"
memory_mib = $memory
window_mib = 8
restore = "lazy"
$warm_input
[limits]
max_vms = 10000
keep_alive_s = 3600
EOF

port=$((18400 + RANDOM % 500))
start_backend "$dir/b.sock" "$dir/backend.log"
backend=$launched
start_node "$port" "$dir/serve.log" --backend "$dir/b.sock" --state-dir "$dir/state" \
    --max-vms 10000 --prepare --pick "$pick" --vcpu-threads "$vcpu_threads" --wait-timeout-ms "$wait_ms"
serve=$launched
wait_ready "$port" "$dir/serve.log"

# The processes themselves, not their `timeout`s.
serve_pid=$(pgrep -P "$serve")
backend_pid=$(pgrep -P "$backend")
count() { # PID → "fds threads threads-not-KVM's maps"
    local ours
    ours=$(cat /proc/"$1"/task/*/comm 2>/dev/null | grep -cv '^kvm-' || true)
    echo "$(ls "/proc/$1/fd" | wc -l) $(ls "/proc/$1/task" | wc -l) $ours $(wc -l < "/proc/$1/maps")"
}
# Kernel memory the host spends on the VMs, by /proc/meminfo field (KiB).
fields="MemAvailable KernelStack PageTables SecPageTables SUnreclaim VmallocUsed Percpu AnonPages Shmem"
meminfo() { awk -v f=" $fields " 'index(f, " " substr($1, 1, length($1) - 1) " ") { printf "%s=%s ", substr($1, 1, length($1) - 1), $2 }' /proc/meminfo; }
mem0=$(meminfo)
read -r d_fd0 d_th0 d_own0 d_map0 <<< "$(count "$serve_pid")"
read -r b_fd0 b_th0 _ b_map0 <<< "$(count "$backend_pid")"
echo "# pick $pick, ${warm_input:-no warm_input}, $memory MiB RAM, vCPU threads $vcpu_threads, WAIT timeout $wait_ms ms; baseline daemon fds/threads/maps $d_fd0/$d_th0/$d_map0, backend $b_fd0/$b_th0/$b_map0"
printf '| VMs | per VM: daemon fds | threads | not KVM'"'"'s | maps | backend fds | threads | report |\n|---:|---:|---:|---:|---:|---:|---:|---|\n'
IFS=, read -ra list <<< "$sizes"
last=0
for n in "${list[@]}"; do
    step=$(( n < 100 ? n : 100 ))
    report="$dir/park-$n.txt"
    timeout 1800 "$tree/target/release/examples/nexus-load" park \
        --url "http://127.0.0.1:$port" --function wordcount --input-key inputs/small.txt \
        --vms "$n" --step "$step" --invocations "$invocations" -c 4 -q > "$report" 2>&1 || true
    read -r d_fd d_th d_own d_map <<< "$(count "$serve_pid")"
    read -r b_fd b_th _ b_map <<< "$(count "$backend_pid")"
    reached=$(curl -s "http://127.0.0.1:$port/v1/functions/wordcount" | python3 -c \
        'import json,sys; v=json.load(sys.stdin)["vms"]; print(v["idle"]+v["busy"])')
    per() { python3 -c "print(f'{($1 - $2) / max($reached, 1):.2f}')"; }
    echo "| $reached | $(per "$d_fd" "$d_fd0") | $(per "$d_th" "$d_th0") | $(per "$d_own" "$d_own0") | $(per "$d_map" "$d_map0") | $(per "$b_fd" "$b_fd0") | $(per "$b_th" "$b_th0") | $report |"
    mem1=$(meminfo)
    python3 - "$reached" "$mem0" "$mem1" <<'PY' >> "$dir/meminfo.txt"
import sys
n = int(sys.argv[1]); a = dict(kv.split("=") for kv in sys.argv[2].split()); b = dict(kv.split("=") for kv in sys.argv[3].split())
print(f"{n} VMs, KiB per VM since the start:", ", ".join(f"{k} {(int(a[k]) - int(b[k])) if k == 'MemAvailable' else (int(b[k]) - int(a[k])):+} -> {((int(a[k]) - int(b[k])) if k == 'MemAvailable' else (int(b[k]) - int(a[k]))) / max(n, 1):.1f}" for k in a))
PY
    last=$reached
    [ "$reached" -ge "$n" ] || { echo "stopped at $reached of $n VMs: see $report" >&2; break; }
done

cpu() { curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
if [ "$idle" -gt 0 ]; then
    d0=$(cpu nexus_vmm_cpu_seconds_total); b0=$(cpu nexus_backend_cpu_seconds_total)
    sleep "$idle"
    d1=$(cpu nexus_vmm_cpu_seconds_total); b1=$(cpu nexus_backend_cpu_seconds_total)
    python3 -c "print(f'idle over ${idle} s with $last parked VMs: daemon {($d1 - $d0) / $idle:.4f} cores, backend {($b1 - $b0) / $idle:.4f} cores')"
fi
echo "== host memory (/proc/meminfo, includes whatever else ran meanwhile)"; cat "$dir/meminfo.txt"
for f in "$dir"/park-*.txt; do echo "== $f"; cat "$f"; done
