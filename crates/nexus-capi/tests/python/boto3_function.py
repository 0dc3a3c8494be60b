# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""A plain boto3 program (tests/python.rs): after the two lines that install the shim there
is no Nexus-specific code. It reads input/words.txt, writes its upper-cased words to
output/words.txt, copies input/blob through upload_fileobj/download_fileobj, lists output/,
and checks that a missing key is a ClientError NoSuchKey."""

import nexus.boto3

# The connection comes from NEXUS_CONTROL_SOCKET / NEXUS_TENANT; keys are the tenant's.
nexus.boto3.install(key_prefix="alpha/")

# --- plain boto3 from here on ---
import io
import os
import sys

import boto3
from botocore.exceptions import ClientError

BUCKET = os.environ.get("BUCKET", "data")
s3 = boto3.client("s3")

response = s3.get_object(Bucket=BUCKET, Key="input/words.txt")
text = response["Body"].read().decode()
assert response["ContentLength"] == len(text), response
assert response["ETag"].startswith('"'), response
words = text.split()
s3.put_object(Bucket=BUCKET, Key="output/words.txt", Body=" ".join(w.upper() for w in words).encode())

head = s3.head_object(Bucket=BUCKET, Key="output/words.txt")
assert head["ContentLength"] == len(text.strip()), head

blob = io.BytesIO()
s3.download_fileobj(BUCKET, "input/blob", blob)
s3.upload_fileobj(io.BytesIO(blob.getvalue()), BUCKET, "output/blob")

listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="output/")
assert listed["KeyCount"] == 2 and not listed["IsTruncated"], listed
assert [c["Key"] for c in listed["Contents"]] == ["output/blob", "output/words.txt"], listed

try:
    s3.get_object(Bucket=BUCKET, Key="input/missing")
    sys.exit("get_object of a missing key succeeded")
except ClientError as e:
    assert e.response["Error"]["Code"] == "NoSuchKey", e.response
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 404, e.response
    print("missing key:", e.response["Error"]["Code"])

s3.delete_object(Bucket=BUCKET, Key="input/words.txt")
print(f"boto3_function: {len(words)} words")
