#!/usr/bin/env bash
# Warm-path benchmark of two or more builds of Nexus, side by side on one machine.
#
#   scripts/compare-warm.sh [-r ROUNDS] [-d DURATION] [-c WORKERS] TREE...
#
# Each TREE is a checkout with release builds of the backend, the node daemon and the load
# generator (in the tree: `cargo build --release -p nexus-backend --bin nexus-backend` and
# `cargo build --release -p nexus --example nexus-vmm --example nexus-load`); the daemon builds
# the tree's own bundled micro-guests on first use. For every round and every tree, in turn:
# a fresh `nexus-backend` over a local store holding a 26-byte object, a fresh
# `nexus-vmm serve` with the function `wordcount` (32 MiB RAM, 8 MiB window, lazy restore,
# snapshot prepared before the load starts), then `nexus-load run` in a closed loop over that
# object; both processes are stopped afterwards. The trees alternate within each round so that
# a slow spell of the machine falls on all of them. Reports go to $OUT (default: a temporary
# directory), one file per tree and round; the last lines print where.
set -euo pipefail

rounds=3
duration=15s
workers=4
while getopts "r:d:c:" opt; do
    case $opt in
        r) rounds=$OPTARG ;;
        d) duration=$OPTARG ;;
        c) workers=$OPTARG ;;
        *) echo "usage: $0 [-r ROUNDS] [-d DURATION] [-c WORKERS] TREE..." >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-r ROUNDS] [-d DURATION] [-c WORKERS] TREE..." >&2; exit 2; }

for tree in "$@"; do
    for bin in target/release/nexus-backend target/release/examples/nexus-vmm \
        target/release/examples/nexus-load; do
        [ -x "$tree/$bin" ] || { echo "$tree/$bin is missing: build it first (see the header)" >&2; exit 1; }
    done
done

out=${OUT:-$(mktemp -d /tmp/nexus-compare.XXXXXX)}
mkdir -p "$out"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

port=18181
for round in $(seq 1 "$rounds"); do
    for tree in "$@"; do
        name=$(basename "$(cd "$tree" && pwd)")
        dir=$(mktemp -d /tmp/nexus-compare-run.XXXXXX)
        mkdir -p "$dir/store/inputs" "$dir/fns"
        printf 'the quick brown fox jumps\n' > "$dir/store/inputs/small.txt"
        printf 'guest = "wordcount"\nmemory_mib = 32\nwindow_mib = 8\nrestore = "lazy"\n' \
            > "$dir/fns/wordcount.toml"
        port=$((port + 1))
        timeout 900 "$tree/target/release/nexus-backend" --listen "$dir/b.sock" \
            --store "file://$dir/store" > "$dir/backend.log" 2>&1 &
        pids+=($!)
        backend=$!
        for _ in $(seq 1 100); do [ -S "$dir/b.sock" ] && break; sleep 0.1; done
        timeout 900 "$tree/target/release/examples/nexus-vmm" serve \
            --listen "127.0.0.1:$port" --backend "$dir/b.sock" --functions "$dir/fns" \
            --state-dir "$dir/state" --max-vms 4000 --prepare > "$dir/serve.log" 2>&1 &
        pids+=($!)
        serve=$!
        for _ in $(seq 1 3000); do
            curl -sf "http://127.0.0.1:$port/healthz" > /dev/null 2>&1 && break
            sleep 0.1
        done
        report="$out/$name-round$round.txt"
        echo "round $round: $name → $report" >&2
        timeout 300 "$tree/target/release/examples/nexus-load" run \
            --url "http://127.0.0.1:$port" --function wordcount --input-key inputs/small.txt \
            -c "$workers" --duration "$duration" > "$report" 2> "$dir/load.log" \
            || { echo "nexus-load failed; logs in $dir" >&2; exit 1; }
        kill "$serve" "$backend" 2>/dev/null || true
        wait "$serve" "$backend" 2>/dev/null || true
        rm -rf "$dir"
    done
done
echo "reports in $out" >&2
ls "$out"
