# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""boto3 ``get_object`` through the nexus-io shim vs the same call over HTTP to a real S3
server, side by side in one run (medians).

- nexus-io: a real ``nexus-backend`` over a file store, reached through libnexus's loopback
  transport (``nexus.boto3.install()``; the hooks chosen with ``--hooks``);
- S3: ``nexus-load s3-server`` (s3s-fs over a directory, SigV4, plain HTTP on 127.0.0.1),
  reached by an ordinary ``boto3.client("s3", endpoint_url=...)``.

For each size, each path GETs the object ``--iterations`` times in a row (after three
warm-up GETs) and reads its body whole (``response["Body"].read()``). ``run.sh`` builds what it needs (release) and runs this.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

TENANT = "bench"
BUCKET = "bench"
ACCESS_KEY = "AKIDNEXUSBENCH"
SECRET_KEY = "nexus-bench-secret"


def parse_size(text):
    units = {"k": 1024, "m": 1024 * 1024}
    text = text.strip().lower().rstrip("ib")
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def human(size):
    for unit, factor in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def wait_for_socket(path, process, log, timeout=30):
    import socket

    start = time.time()
    while time.time() - start < timeout:
        if process.poll() is not None:
            sys.exit(f"nexus-backend exited:\n{open(log).read()}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
            return
        except OSError:
            time.sleep(0.02)
    sys.exit("nexus-backend did not start")


def start_s3_server(binary, root, log):
    process = subprocess.Popen(
        [binary, "s3-server", "--root", root, "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY],
        stdout=subprocess.PIPE,
        stderr=open(log, "w"),
        text=True,
    )
    line = process.stdout.readline()
    prefix = "nexus-load s3-server: listening on "
    if not line.startswith(prefix):
        process.kill()
        sys.exit(f"the S3 server did not start: {line!r}\n{open(log).read()}")
    return process, line[len(prefix) :].strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", required=True, help="the nexus-backend binary")
    parser.add_argument("--s3-server", required=True, help="the nexus-load binary (its s3-server command)")
    parser.add_argument("--library", required=True, help="libnexus (NEXUS_LIBRARY)")
    parser.add_argument("--sizes", default="4KiB,64KiB,16MiB")
    parser.add_argument("--iterations", type=int, default=300, help="GETs per path for objects up to 1 MiB")
    parser.add_argument("--large-iterations", type=int, default=30, help="GETs per path for larger objects")
    parser.add_argument("--hooks", default="class", help="shim hooks to measure: class,before-call")
    args = parser.parse_args()
    os.environ["NEXUS_LIBRARY"] = os.path.abspath(args.library)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    hooks = args.hooks.split(",")

    import boto3
    from botocore.config import Config

    import nexus
    import nexus.boto3

    work = tempfile.mkdtemp(prefix="nexus-bench-")
    processes = []
    try:
        objects = os.path.join(work, "objects")
        os.makedirs(objects)
        control = os.path.join(work, "control.sock")
        backend_log = os.path.join(work, "backend.log")
        backend = subprocess.Popen(
            [args.backend, "--listen", control, "--store", f"file://{objects}", "--tenant", f"{TENANT}={TENANT}"],
            stdout=subprocess.DEVNULL,
            stderr=open(backend_log, "w"),
        )
        processes.append(backend)
        wait_for_socket(control, backend, backend_log)
        s3_root = os.path.join(work, "s3")
        os.makedirs(os.path.join(s3_root, BUCKET))
        s3_server, address = start_s3_server(args.s3_server, s3_root, os.path.join(work, "s3.log"))
        processes.append(s3_server)

        # The HTTP client comes from a session of its own made before the shim is installed:
        # it stays an HTTP client.
        http = boto3.session.Session().client(
            "s3",
            endpoint_url=f"http://{address}",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )
        client = nexus.connect(control, vm_id="bench", tenant=TENANT, window_size=64 << 20)
        payloads = {}
        for size in sizes:
            data = os.urandom(size)
            key = f"bench/object-{size}"
            payloads[size] = data
            http.put_object(Bucket=BUCKET, Key=key, Body=data)
            client.put(key, data)

        shims = {}
        for hook in hooks:
            nexus.boto3.install(client, hook=hook)
            shims[hook] = boto3.client("s3", region_name="us-east-1")
        paths = [("s3 over HTTP", http)] + [(f"nexus-io shim ({hook})", shims[hook]) for hook in hooks]

        print(f"boto3 get_object, body read whole; medians in ms (python {sys.version.split()[0]}, boto3 {boto3.__version__})")
        header = f"{'size':>8} {'iterations':>10} " + " ".join(f"{name:>26}" for name, _ in paths)
        header += "   " + " ".join(f"{'S3/' + h:>16}" for h in hooks)
        print(header)
        for size in sizes:
            key = f"bench/object-{size}"
            n = args.iterations if size <= (1 << 20) else args.large_iterations
            # One path after the other (each warmed up first), not interleaved: a large GET
            # right after another path's frees memory that the next one faults in again,
            # which would charge one path for the other's allocations.
            samples = {name: [] for name, _ in paths}
            for name, s3 in paths:
                if name.startswith("nexus"):
                    nexus.boto3.install(client, hook=name[name.index("(") + 1 : -1])
                for i in range(n + 3):
                    start = time.perf_counter()
                    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                    elapsed = time.perf_counter() - start
                    if len(body) != size or (i == 0 and body != payloads[size]):
                        sys.exit(f"{name}: wrong body for {key}")
                    if i >= 3:  # warm-up
                        samples[name].append(elapsed)
            medians = {name: statistics.median(v) * 1000 for name, v in samples.items()}
            s3_median = medians["s3 over HTTP"]
            row = f"{human(size):>8} {n:>10} " + " ".join(f"{medians[name]:>26.3f}" for name, _ in paths)
            row += "   " + " ".join(f"{s3_median / medians[f'nexus-io shim ({h})']:>15.2f}x" for h in hooks)
            print(row, flush=True)
        client.close()
    finally:
        for process in processes:
            process.kill()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
