# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""nexus.Client against a real backend (tests/python.rs): PUT, GET, HEAD, LIST, DELETE,
write-behind PUT + FLUSH, ranges, an object larger than one scratch read, NotFound.
Leaves py/kept (b"kept by Python") and py/big (200 KiB of a pattern) in the store."""

import os
import sys

import nexus

client = nexus.connect(os.environ["NEXUS_CONTROL_SOCKET"], vm_id="py-client", tenant=os.environ["NEXUS_TENANT"])
assert client.max_payload > 0

client.put("py/kept", b"kept by Python")
assert client.get("py/kept") == b"kept by Python"
info = client.head("py/kept")
assert info.size == 14, info
assert client.get_range("py/kept", 8, 100) == (b"Python", 14)

big = bytes(i % 251 for i in range(200 * 1024))
client.put("py/big", big)
assert client.get("py/big") == big
assert client.get("py/big", size_hint=len(big)) == big

client.put("py/gone", "temporary")
client.delete("py/gone")
try:
    client.get("py/gone")
    sys.exit("GET of a deleted object succeeded")
except nexus.NotFound as e:
    assert e.status == nexus.NOT_FOUND and e.key == "py/gone", e
try:
    client.head("py/gone")
    sys.exit("HEAD of a deleted object succeeded")
except nexus.NotFound:
    pass

client.put_behind("py/behind", b"written behind")
client.flush()

keys = [e.key for e in client.list_all("py/")]
assert keys == ["py/behind", "py/big", "py/kept"], keys
page = client.list("py/")
assert page.next_token is None and [e.size for e in page.entries] == [14, len(big), 14], page

# What the C/Rust side left for us.
assert client.get("shared/from-rust") == b"hello from Rust"
client.close()
print("client_roundtrip: ok")
