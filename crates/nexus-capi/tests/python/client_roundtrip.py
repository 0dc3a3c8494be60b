# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""nexus.Client against a real backend (tests/python.rs): PUT, GET, HEAD, LIST, DELETE,
write-behind PUT + FLUSH, ranges, an object larger than one scratch read, NotFound, one
client used by several threads at once.
Leaves alpha/py/kept (b"kept by Python") and alpha/py/big (200 KiB of a pattern) in the store."""

import os
import sys

import nexus

client = nexus.connect(os.environ["NEXUS_CONTROL_SOCKET"], vm_id="py-client", tenant=os.environ["NEXUS_TENANT"])
assert client.max_payload > 0

client.put("alpha/py/kept", b"kept by Python")
assert client.get("alpha/py/kept") == b"kept by Python"
info = client.head("alpha/py/kept")
assert info.size == 14, info
assert client.get_range("alpha/py/kept", 8, 100) == (b"Python", 14)

big = bytes(i % 251 for i in range(200 * 1024))
client.put("alpha/py/big", big)
assert client.get("alpha/py/big") == big
assert client.get("alpha/py/big", size_hint=len(big)) == big

client.put("alpha/py/gone", "temporary")
client.delete("alpha/py/gone")
try:
    client.get("alpha/py/gone")
    sys.exit("GET of a deleted object succeeded")
except nexus.NotFound as e:
    assert e.status == nexus.NOT_FOUND and e.key == "alpha/py/gone", e
try:
    client.head("alpha/py/gone")
    sys.exit("HEAD of a deleted object succeeded")
except nexus.NotFound:
    pass

client.put_behind("alpha/py/behind", b"written behind")
client.flush()

keys = [e.key for e in client.list_all("alpha/py/")]
assert keys == ["alpha/py/behind", "alpha/py/big", "alpha/py/kept"], keys
page = client.list("alpha/py/")
assert page.next_token is None and [e.size for e in page.entries] == [14, len(big), 14], page

# One client, four threads at once (ctypes lets go of the GIL during each call; libnexus
# serializes the calls on the handle).
import threading

errors = []


def worker(n):
    try:
        for i in range(25):
            key = f"alpha/py/threads/{n}-{i}"
            data = f"{n}:{i}".encode() * (i + 1)
            client.put(key, data)
            assert client.get(key) == data, key
            client.delete(key)
    except Exception as e:  # reported below
        errors.append(e)


threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert not errors, errors
assert list(client.list_all("alpha/py/threads/")) == []

# What the C/Rust side left for us.
assert client.get("alpha/shared/from-rust") == b"hello from Rust"
client.close()
print("client_roundtrip: ok")
