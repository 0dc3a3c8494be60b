#!/usr/bin/env bash
# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# The cost of the seccomp filters on the warm path, side by side (scripts/warm-ab.sh: a
# backend and a node daemon each, `wordcount` over 19 bytes, -v parked VMs, alternating
# closed-loop rounds): both processes with their filters (the default) against both with
# `--no-seccomp`; CPU per invocation of the node daemon and of the backend.
#
#   cargo build --release --workspace --bin nexus-backend --example nexus-vmm --example nexus-load
#   scripts/seccomp-ab.sh [-c 1] [-v 10] [-d 5s] [-r 3] [-p lru|mru]
set -euo pipefail
exec "$(dirname "$0")/warm-ab.sh" "$@" -- \
    seccomp "" "" \
    no-seccomp "--no-seccomp" "--no-seccomp"
