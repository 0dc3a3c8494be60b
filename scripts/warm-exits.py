#!/usr/bin/env python3
# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""VM exits per warm invocation of a function guest, by KVM counter.

Runs the guest twice under `nexus-vmm run --stats` against a fresh `nexus-backend` over a
local store: once with no invocation and once with N, sent one after the other on the
backend's control socket (`invoke`, optionally with an output key), a pause between them so
that the guest parks in NEXT each time. The guest is then ended by stopping the backend (its
NEXT fails three times, it exits and nexus-vmm prints its statistics). The difference of the
two runs, divided by N, is what one warm invocation costs: VM setup, device negotiation and
the end cancel out.

Usage: scripts/warm-exits.py [--target target/release] [--guest wordcount] [-n 200]
                             [--gap-ms 2] [--output] [--inline TEXT] [--input-bytes N]
Build first: cargo build --release -p nexus-backend --bin nexus-backend --example nexus-vmm
and cargo build --release --manifest-path guests/Cargo.toml --bins --target-dir target.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def run(args, invocations):
    """One guest run with `invocations` invocations; returns the KVM counters that moved."""
    work = tempfile.mkdtemp(prefix="warm-exits.")
    try:
        os.makedirs(f"{work}/store/inputs")
        with open(f"{work}/store/inputs/words.txt", "w") as f:
            words = " ".join(["word"] * (args.input_bytes // 5 + 1))
            f.write(words[: args.input_bytes])
        sock = f"{work}/backend.sock"
        backend = subprocess.Popen(
            [f"{args.target}/nexus-backend", "--listen", sock, "--store", f"file://{work}/store"],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while not os.path.exists(sock):
            if time.time() > deadline:
                sys.exit("nexus-backend did not start")
            time.sleep(0.02)
        guest = args.guest if "/" in args.guest else f"{args.target}/{args.guest}"
        vm = subprocess.Popen(
            [f"{args.target}/examples/nexus-vmm", "run", "--guest", guest, "--backend", sock,
             "--vm-id", "warm", "--stats", "--mem", "32", "--window", "16"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        control = socket.socket(socket.AF_UNIX)
        control.connect(sock)
        lines = control.makefile("rw")

        def request(message):
            lines.write(json.dumps(message) + "\n")
            lines.flush()
            return json.loads(lines.readline())

        deadline = time.time() + 60
        while not request({"op": "parked", "vm": "warm", "timeout_ms": 100}).get("ok"):
            if time.time() > deadline or vm.poll() is not None:
                vm.kill()
                sys.exit(f"the guest never parked in NEXT: {vm.communicate()}")
            time.sleep(0.01)
        payload = {"inline": args.inline} if args.inline else {"key": "inputs/words.txt"}
        for i in range(invocations):
            message = {"op": "invoke", "vm": "warm", "input": payload}
            if args.output:
                message["output"] = f"outputs/{i}"
                message["return_output"] = False
            reply = request(message)
            if not reply.get("ok") or reply.get("outcome") != "success":
                sys.exit(f"invocation {i} failed: {reply}")
            time.sleep(args.gap_ms / 1e3)
        request({"op": "parked", "vm": "warm", "timeout_ms": 1000})
        backend.kill()
        backend.wait()
        try:
            _, err = vm.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            vm.kill()
            sys.exit("the guest did not end when the backend went away")
        moved = re.search(r"KVM vCPU counters that moved: (.*)", err)
        users = re.search(r"user-space exits (\d+)", err)
        if not moved or not users:
            sys.exit(f"no statistics in: {err}")
        counters = {k: int(v) for k, v in (c.split(" ") for c in moved.group(1).split(", "))}
        counters["user-space exits"] = int(users.group(1))
        return counters
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="target/release")
    parser.add_argument("--guest", default="wordcount")
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    parser.add_argument("--output", action="store_true", help="give each invocation an output key")
    parser.add_argument("--inline", help="inline input instead of an object")
    parser.add_argument("--input-bytes", type=int, default=15000, help="size of the input object")
    args = parser.parse_args()
    base = run(args, 0)
    loaded = run(args, args.n)
    print(f"{args.guest}{' with output keys' if args.output else ''}: per warm invocation "
          f"({args.n} invocations, {args.gap_ms} ms apart)")
    for name in sorted(set(base) | set(loaded)):
        delta = (loaded.get(name, 0) - base.get(name, 0)) / args.n
        if abs(delta) >= 0.005:
            print(f"  {name:<18} {delta:6.2f}")


if __name__ == "__main__":
    main()
