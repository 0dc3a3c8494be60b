#!/usr/bin/env bash
# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# The warm path with vCPUs on the pool against vCPUs on threads of their own, side by side
# (scripts/warm-ab.sh: a backend and a node daemon each, `wordcount` over 19 bytes, -v parked
# VMs, alternating closed-loop rounds, CPU per invocation).
#
#   cargo build --release --workspace --bin nexus-backend --example nexus-vmm --example nexus-load
#   scripts/vcpu-threads-ab.sh [-c 1] [-v 10] [-d 5s] [-r 3] [-p lru|mru]
set -euo pipefail
exec "$(dirname "$0")/warm-ab.sh" "$@" -- \
    pool "--vcpu-threads pool" "" \
    own "--vcpu-threads own" ""
