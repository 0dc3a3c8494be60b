# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

"""The boto3 shim's shapes and errors, over an in-memory stand-in for nexus.Client (no
libnexus needed): ``PYTHONPATH=src python3 -m unittest discover -s tests``. The end-to-end
tests with a real backend are crates/nexus-capi/tests/python.rs."""

import io
import os
import unittest

import boto3
import botocore.exceptions
from botocore.response import StreamingBody

import nexus
import nexus.boto3


class FakeClient:
    """nexus.Client's interface over a dict, with pages of three entries."""

    PAGE = 3

    def __init__(self):
        self.objects = {}
        self.denied = set()

    def _check(self, key):
        if key in self.denied:
            raise nexus.AccessDenied(nexus.ACCESS_DENIED, f"Permission denied: {key}", key)
        if key not in self.objects:
            raise nexus.NotFound(nexus.NOT_FOUND, f"Not found: {key}", key)

    def get(self, key, size_hint=None):
        self._check(key)
        return self.objects[key]

    def get_range(self, key, offset, length):
        self._check(key)
        data = self.objects[key]
        return data[offset : offset + length], len(data)

    def put(self, key, data):
        if key in self.denied:
            raise nexus.AccessDenied(nexus.ACCESS_DENIED, "Permission denied", key)
        self.objects[key] = bytes(data)

    put_behind = put

    def head(self, key):
        self._check(key)
        return nexus.ObjectInfo("", len(self.objects[key]), 1_700_000_000_000, f"etag-{len(self.objects[key])}")

    def delete(self, key):
        self.objects.pop(key, None)

    def list(self, prefix="", token=None):
        keys = sorted(k for k in self.objects if k.startswith(prefix))
        if token:
            keys = [k for k in keys if k > token.decode()]
        page = keys[: self.PAGE]
        entries = [nexus.ObjectInfo(k, len(self.objects[k]), 0, "e") for k in page]
        more = len(keys) > self.PAGE
        return nexus.ListPage(entries, page[-1].encode() if more else None)


class ShimTest(unittest.TestCase):
    hook = "class"

    def setUp(self):
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        self.fake = FakeClient()
        nexus.boto3.install(self.fake, bucket="data", key_prefix="t1/", hook=self.hook)
        self.s3 = boto3.client("s3")

    def tearDown(self):
        nexus.boto3.uninstall()

    def test_put_get_head_delete(self):
        put = self.s3.put_object(Bucket="data", Key="a/1", Body=b"hello")
        self.assertEqual(put["ETag"], '"etag-5"')
        self.assertEqual(self.fake.objects["t1/a/1"], b"hello")
        got = self.s3.get_object(Bucket="data", Key="a/1")
        self.assertIsInstance(got["Body"], StreamingBody)
        self.assertEqual(got["Body"].read(), b"hello")
        self.assertEqual(got["ContentLength"], 5)
        self.assertEqual(got["ETag"], '"etag-5"')
        self.assertEqual(got["ResponseMetadata"]["HTTPStatusCode"], 200)
        self.assertEqual(got["LastModified"].year, 2023)
        part = self.s3.get_object(Bucket="data", Key="a/1", Range="bytes=1-3")
        self.assertEqual(part["Body"].read(), b"ell")
        self.assertEqual(part["ContentRange"], "bytes 1-3/5")
        self.assertEqual(self.s3.get_object(Bucket="data", Key="a/1", Range="bytes=-2")["Body"].read(), b"lo")
        head = self.s3.head_object(Bucket="data", Key="a/1")
        self.assertEqual(head["ContentLength"], 5)
        self.s3.delete_object(Bucket="data", Key="a/1")
        self.assertNotIn("t1/a/1", self.fake.objects)

    def test_errors_are_client_errors_with_s3_codes(self):
        with self.assertRaises(self.s3.exceptions.NoSuchKey) as raised:
            self.s3.get_object(Bucket="data", Key="missing")
        self.assertIsInstance(raised.exception, botocore.exceptions.ClientError)
        self.assertEqual(raised.exception.response["Error"]["Code"], "NoSuchKey")
        self.assertEqual(raised.exception.response["ResponseMetadata"]["HTTPStatusCode"], 404)
        with self.assertRaises(botocore.exceptions.ClientError) as raised:
            self.s3.head_object(Bucket="data", Key="missing")
        self.assertEqual(raised.exception.response["Error"]["Code"], "404")
        self.fake.denied.add("t1/secret")
        with self.assertRaises(botocore.exceptions.ClientError) as raised:
            self.s3.put_object(Bucket="data", Key="secret", Body=b"x")
        self.assertEqual(raised.exception.response["Error"]["Code"], "AccessDenied")
        self.assertEqual(raised.exception.response["ResponseMetadata"]["HTTPStatusCode"], 403)
        with self.assertRaises(self.s3.exceptions.NoSuchBucket):
            self.s3.get_object(Bucket="other", Key="a")
        self.fake.objects["t1/k"] = b"v"
        with self.assertRaises(botocore.exceptions.ClientError) as raised:
            self.s3.get_object(Bucket="data", Key="k", IfMatch='"nope"')
        self.assertEqual(raised.exception.response["Error"]["Code"], "PreconditionFailed")

    def test_uncovered_calls_and_parameters_fail_naming_them(self):
        with self.assertRaises(nexus.boto3.UnsupportedCall) as raised:
            self.s3.list_buckets()
        self.assertIn("ListBuckets", str(raised.exception))
        self.assertIn("list_buckets", str(raised.exception))
        with self.assertRaises(nexus.boto3.UnsupportedCall) as raised:
            self.s3.list_objects_v2(Bucket="data", Delimiter="/")
        self.assertIn("Delimiter", str(raised.exception))

    def test_list_pages_and_paginators(self):
        for i in range(8):
            self.fake.objects[f"t1/p/{i}"] = b"x" * i
        self.fake.objects["t1/q/0"] = b""
        self.fake.objects["t0/outside"] = b""
        first = self.s3.list_objects_v2(Bucket="data", Prefix="p/", MaxKeys=2)
        self.assertEqual([c["Key"] for c in first["Contents"]], ["p/0", "p/1"])
        self.assertEqual(first["KeyCount"], 2)
        self.assertTrue(first["IsTruncated"])
        keys = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket="data", Prefix="p/", PaginationConfig={"PageSize": 2}):
            keys += [c["Key"] for c in page.get("Contents", [])]
        self.assertEqual(keys, [f"p/{i}" for i in range(8)])
        after = self.s3.list_objects_v2(Bucket="data", StartAfter="p/6")
        self.assertEqual([c["Key"] for c in after["Contents"]][:2], ["p/7", "q/0"])
        everything = self.s3.list_objects_v2(Bucket="data")
        # One backend page (three entries here), the key prefix taken off.
        self.assertEqual([c["Key"] for c in everything["Contents"]], ["p/0", "p/1", "p/2"])
        self.assertTrue(everything["IsTruncated"])
        self.assertEqual(everything["Prefix"], "")
        empty = self.s3.list_objects_v2(Bucket="data", Prefix="none/")
        self.assertEqual(empty["KeyCount"], 0)
        self.assertNotIn("Contents", empty)
        self.assertFalse(empty["IsTruncated"])

    def test_transfers(self):
        small = os.urandom(1000)
        self.s3.upload_fileobj(io.BytesIO(small), "data", "t/small")
        self.assertEqual(self.fake.objects["t1/t/small"], small)
        large = os.urandom(9 * 1024 * 1024)  # over the 8 MiB multipart threshold
        self.s3.upload_fileobj(io.BytesIO(large), "data", "t/large")
        self.assertEqual(self.fake.objects["t1/t/large"], large)
        for key, data in (("t/small", small), ("t/large", large)):
            out = io.BytesIO()
            self.s3.download_fileobj("data", key, out)
            self.assertEqual(out.getvalue(), data)


class BeforeCallShimTest(ShimTest):
    hook = "before-call"


if __name__ == "__main__":
    unittest.main()
