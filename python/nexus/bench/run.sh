#!/usr/bin/env bash
# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Builds (release) nexus-backend, libnexus and the S3 server of the comparison
# (`nexus-load s3-server`), then runs get_vs_s3.py; extra arguments go to the script, e.g.
#   python/nexus/bench/run.sh --hooks class,before-call --iterations 500
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$root"
export CARGO_INCREMENTAL=0
cargo build --release --quiet -p nexus-backend --bin nexus-backend
cargo build --release --quiet -p nexus-capi --lib
cargo build --release --quiet --example nexus-load
target="${CARGO_TARGET_DIR:-$root/target}/release"
exec python3 "$root/python/nexus/bench/get_vs_s3.py" \
    --backend "$target/nexus-backend" \
    --s3-server "$target/examples/nexus-load" \
    --library "$target/libnexus_capi.so" "$@"
