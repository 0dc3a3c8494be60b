#!/usr/bin/env bash
# Runs every fuzz target (nexus-ring, the virtio-mmio transport, the backend's operation layer)
# for N seconds each (default 60) and fails on any crash.
#
#   bash fuzz/run.sh [seconds]
#
# Needs the nightly toolchain (sanitizers); installs cargo-fuzz if it is missing. New inputs
# go to fuzz/target/run-corpus/<target>, so the committed seeds in fuzz/corpus stay as they are.
# Crashes are saved under fuzz/artifacts/<target>/.
set -euo pipefail

duration="${1:-60}"
if ! [[ "$duration" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [seconds]" >&2
    exit 2
fi

cd "$(dirname "${BASH_SOURCE[0]}")"

# cargo-fuzz needs nightly compiler flags: use the nightly toolchain when the machine has one,
# otherwise the stable compiler with RUSTC_BOOTSTRAP (its std ships the sanitizer runtimes).
if rustup run nightly rustc --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
else
    echo "no nightly toolchain: using stable with RUSTC_BOOTSTRAP=1" >&2
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=$("${fuzz[@]}" list)
if [ -z "$targets" ]; then
    echo "no fuzz targets found" >&2
    exit 1
fi

status=0
for target in $targets; do
    scratch="target/run-corpus/$target"
    mkdir -p "$scratch" "corpus/$target"
    echo "=== fuzzing $target for ${duration}s"
    if ! "${fuzz[@]}" run "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$duration"; then
        echo "=== $target FAILED (see fuzz/artifacts/$target/)" >&2
        status=1
    fi
done
exit "$status"
