#!/usr/bin/env python3
# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Sums the KVM binary statistics of every vCPU of a running VMM process.

    scripts/kvm-stats.py PID > before.json
    ... run something ...
    scripts/kvm-stats.py PID --diff before.json [--per N]

The first form prints every cumulative vCPU counter (exits, pf_fixed, pf_emulate,
tlb_flush, mmio_exits, ...) summed over the process's vCPUs, as JSON. The second prints
what moved since BEFORE, divided by N (say, the invocations in between). It takes each
`kvm-vcpu-stats` descriptor of the process with pidfd_getfd(2), so it needs the right to
ptrace the process (root, or the same user with ptrace_scope 0), and it reads only the
statistics the kernel exports (Documentation/virt/kvm/api.rst, KVM_GET_STATS_FD).
"""

import argparse
import ctypes
import json
import os
import struct
import sys

SYS_PIDFD_GETFD = 438  # x86-64
STATS_TYPE_MASK = 0xF
STATS_TYPE_CUMULATIVE = 0


def vcpu_stats(pid):
    """Cumulative vCPU counters of `pid`, summed over its vCPUs, and the vCPU count."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    totals, vcpus = {}, 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            if not link.startswith("anon_inode:kvm-vcpu-stats"):
                continue
            local = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0)
            if local < 0:
                err = ctypes.get_errno()
                if err == 9:  # EBADF: closed meanwhile
                    continue
                sys.exit(f"pidfd_getfd on {pid}'s fd {fd}: {os.strerror(err)}")
            try:
                _flags, name_size, count, _id, desc_at, data_at = struct.unpack(
                    "<6I", os.pread(local, 24, 0))
                size = 16 + name_size
                descs = os.pread(local, size * count, desc_at)
                data = os.pread(local, 1 << 16, data_at)
                for i in range(count):
                    d = descs[i * size:(i + 1) * size]
                    flags, _exp, n, offset, _bucket = struct.unpack("<IhHII", d[:16])
                    if n != 1 or flags & STATS_TYPE_MASK != STATS_TYPE_CUMULATIVE:
                        continue
                    name = d[16:].split(b"\0")[0].decode()
                    (value,) = struct.unpack_from("<Q", data, offset)
                    totals[name] = totals.get(name, 0) + value
                vcpus += 1
            finally:
                os.close(local)
    finally:
        os.close(pidfd)
    return totals, vcpus


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pid", type=int)
    parser.add_argument("--diff", metavar="BEFORE", help="a JSON file this script wrote")
    parser.add_argument("--per", type=float, default=1.0, help="divide the moves by this")
    args = parser.parse_args()
    totals, vcpus = vcpu_stats(args.pid)
    if not args.diff:
        json.dump({"vcpus": vcpus, "counters": totals}, sys.stdout, indent=1, sort_keys=True)
        print()
        return
    with open(args.diff, encoding="utf-8") as f:
        before = json.load(f)["counters"]
    moved = {k: (v - before.get(k, 0)) / args.per for k, v in sorted(totals.items())}
    print(json.dumps({k: round(v, 2) for k, v in moved.items() if v}))


if __name__ == "__main__":
    main()
