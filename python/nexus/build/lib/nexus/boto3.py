# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

"""Transparent boto3: ``nexus.boto3.install()`` makes every S3 client created afterwards
(``boto3.client("s3")``, ``boto3.resource("s3").meta.client``) send its object calls through
nexus-io instead of HTTP.

Covered calls: ``get_object`` (with ``Range`` and ``IfMatch``), ``put_object``,
``head_object``, ``delete_object``, ``list_objects_v2`` (with ``Prefix``, ``MaxKeys``,
``ContinuationToken``, ``StartAfter``; paginators work), and the multipart calls that
``upload_fileobj``/``upload_file`` make for large files (``create_multipart_upload``,
``upload_part``, ``complete_multipart_upload``, ``abort_multipart_upload``: the parts are
held in memory and written as one object on completion); ``download_fileobj`` and
``download_file`` use ``head_object`` and ``get_object``. Any other S3 call, and any request
parameter the shim cannot honour (such as ``Delimiter``), fails at once with
:class:`UnsupportedCall`, a ``ClientError`` with code ``NotImplemented`` naming it: the guest
has no network to fall back to.

``Bucket``: the tenant's objects are one key space. With ``install(bucket=None)`` (the
default) the bucket name is ignored; with ``install(bucket="name")`` every other name fails
with ``NoSuchBucket`` (404). ``Key``: the object's nexus-io key, after ``key_prefix`` (for
example the tenant's prefix, ``install(key_prefix="alpha/")``; listed keys come back without
it).

Errors are ``botocore.exceptions.ClientError`` (the client's modeled classes, such as
``client.exceptions.NoSuchKey``) with S3's codes: ``NoSuchKey`` (404; ``"404"`` for
``head_object``, as S3 answers a HEAD without a body), ``AccessDenied`` (403),
``EntityTooLarge`` (400), ``SlowDown``/``ServiceUnavailable`` (503), ``InternalError`` (500).

The hook: on botocore's ``creating-client-class.s3`` event the shim puts a class first in
the S3 client's bases whose ``_make_api_call`` answers the covered operations itself, so none
of botocore's per-call work (parameter validation, serialization, signing, the HTTP round
trip, parsing) runs. ``install(hook="before-call")`` uses botocore's ``before-call`` event
instead (validation and serialization run, the send is skipped): slower, kept for comparison
(``bench/get_vs_s3.py --hook``).
"""

import base64
import binascii
import datetime
import hashlib
import io
import re
import threading
import uuid

import botocore.session
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, ParamValidationError
from botocore.response import StreamingBody

import nexus

__all__ = ["install", "uninstall", "installed", "UnsupportedCall"]


class UnsupportedCall(ClientError):
    """An S3 call (or parameter) that nexus-io does not provide."""


_state = None
_original_session_init = None


class _Shim:
    """What ``install`` configured, and the multipart uploads in progress."""

    def __init__(self, client, bucket, key_prefix, write_behind, hook, connect_args):
        self._client = client
        self._connect_args = connect_args
        self._connect_lock = threading.Lock()
        self.bucket = bucket
        self.key_prefix = key_prefix
        self.write_behind = write_behind
        self.hook = hook
        self.uploads = {}
        self.uploads_lock = threading.Lock()

    @property
    def client(self):
        if self._client is None:
            with self._connect_lock:
                if self._client is None:
                    self._client = nexus.connect(**self._connect_args)
        return self._client


def install(
    client=None,
    *,
    bucket=None,
    key_prefix="",
    write_behind=False,
    hook="class",
    **connect_args,
):
    """Sends the S3 calls of boto3 clients created from now on through nexus-io.

    ``client``: a :class:`nexus.Client`, or None to open one with
    ``nexus.connect(**connect_args)`` on the first call. ``bucket``: the one bucket name
    accepted (None: any). ``key_prefix``: put before every key (and taken off listed keys).
    ``write_behind``: ``put_object`` uses write-behind PUTs (durable
    after ``client.flush()``) instead of synchronous ones. ``hook``: ``"class"`` (the
    default) or ``"before-call"``.
    """
    global _state, _original_session_init
    if hook not in ("class", "before-call"):
        raise ValueError(f"unknown hook {hook!r}")
    _state = _Shim(client, bucket, key_prefix, write_behind, hook, connect_args)
    if _original_session_init is None:
        original = botocore.session.Session.__init__
        _original_session_init = original

        def __init__(self, *args, **kwargs):
            original(self, *args, **kwargs)
            _register(self)

        botocore.session.Session.__init__ = __init__
    # Sessions made before install(): boto3's default session.
    try:
        import boto3 as _boto3

        if _boto3.DEFAULT_SESSION is not None:
            _register(_boto3.DEFAULT_SESSION._session)
    except ImportError:
        pass
    return _state.client if client is not None else None


def uninstall():
    """Clients created from now on speak HTTP again (existing ones keep the shim's class but
    fall through to botocore)."""
    global _state, _original_session_init
    _state = None
    if _original_session_init is not None:
        botocore.session.Session.__init__ = _original_session_init
        _original_session_init = None


def installed():
    """Whether the shim is installed."""
    return _state is not None


def _register(session):
    session.register("creating-client-class.s3", _add_base_class, unique_id="nexus-io-shim")
    session.register("before-parameter-build.s3", _keep_params, unique_id="nexus-io-params")
    session.register("before-call.s3", _before_call, unique_id="nexus-io-before-call")


def _add_base_class(class_attributes, base_classes, **kwargs):
    if _NexusS3Client not in base_classes:
        base_classes.insert(0, _NexusS3Client)


class _NexusS3Client:
    """First base of S3 client classes: answers the covered calls without botocore."""

    def _make_api_call(self, operation_name, api_params):
        state = _state
        if state is None or state.hook != "class":
            return super()._make_api_call(operation_name, api_params)
        status, parsed = _dispatch(state, operation_name, api_params)
        if status >= 300:
            code = parsed["Error"]["Code"]
            error_class = UnsupportedCall if code == "NotImplemented" else self.exceptions.from_code(code)
            raise error_class(parsed, operation_name)
        return parsed


def _keep_params(params, context, **kwargs):
    """``before-call`` sees the serialized request only: keep the call's parameters."""
    if _state is not None and _state.hook == "before-call" and context is not None:
        context["nexus_params"] = dict(params)


def _before_call(model, params, context, **kwargs):
    state = _state
    if state is None or state.hook != "before-call":
        return None
    api_params = (context or {}).get("nexus_params", {})
    status, parsed = _dispatch(state, model.name, api_params)
    if status >= 300 and parsed["Error"]["Code"] == "NotImplemented":
        raise UnsupportedCall(parsed, model.name)
    return AWSResponse("nexus-io://", status, {}, None), parsed


# The answer to every call.


def _metadata(status):
    return {"RequestId": "", "HTTPStatusCode": status, "HTTPHeaders": {}, "RetryAttempts": 0}


def _ok(body, status=200):
    body["ResponseMetadata"] = _metadata(status)
    return status, body


def _error(status, code, message, **extra):
    error = {"Code": code, "Message": message}
    error.update(extra)
    return status, {"Error": error, "ResponseMetadata": _metadata(status)}


def _unsupported(what):
    return _error(
        501,
        "NotImplemented",
        f"{what} is not available through nexus-io (nexus.boto3 shim; the guest has no network)",
    )


# NexusError status → (HTTP status, S3 code).
_S3_ERRORS = {
    nexus.NOT_FOUND: (404, "NoSuchKey"),
    nexus.ACCESS_DENIED: (403, "AccessDenied"),
    nexus.INVALID_REQUEST: (400, "InvalidRequest"),
    nexus.INVALID_ARGUMENT: (400, "InvalidArgument"),
    nexus.TOO_LARGE: (400, "EntityTooLarge"),
    nexus.PAYLOAD_TOO_LARGE: (400, "EntityTooLarge"),
    nexus.THROTTLED: (503, "SlowDown"),
    nexus.BACKEND_UNAVAILABLE: (503, "ServiceUnavailable"),
    nexus.TIMEOUT: (400, "RequestTimeout"),
}


def _from_nexus(error, operation, key):
    status, code = _S3_ERRORS.get(error.status, (500, "InternalError"))
    if operation == "HeadObject":
        # S3 answers a HEAD without a body: botocore's code is the status.
        return _error(status, str(status), {404: "Not Found", 403: "Forbidden"}.get(status, error.message))
    extra = {"Key": key} if key is not None else {}
    return _error(status, code, error.message, **extra)


def _dispatch(state, operation, params):
    handler = _OPERATIONS.get(operation)
    if handler is None:
        return _unsupported(f"S3 call {operation} ({_snake(operation)})")
    params = dict(params)
    ignored, required = _PARAMS[operation]
    for name in required:
        if name not in params:
            raise ParamValidationError(report=f'Missing required parameter in input: "{name}"')
    for name in params:
        if name not in required and name not in ignored and name not in _IGNORED:
            return _unsupported(f"Parameter {name} of S3 call {operation} ({_snake(operation)})")
    bucket = params.get("Bucket")
    if state.bucket is not None and bucket != state.bucket:
        if operation == "HeadObject":
            return _error(404, "404", "Not Found")
        return _error(404, "NoSuchBucket", "The specified bucket does not exist", BucketName=bucket)
    key = params.get("Key")
    if key is not None:
        params["Key"] = state.key_prefix + key
    try:
        return handler(state, params)
    except nexus.NexusError as e:
        return _from_nexus(e, operation, key)


def _snake(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _etag(etag):
    if etag and not etag.startswith('"'):
        return f'"{etag}"'
    return etag


def _time(ms):
    return datetime.datetime.fromtimestamp(ms / 1000.0, tz=datetime.timezone.utc)


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _get_object(state, params):
    client = state.client
    key = params["Key"]
    info = client.head(key)
    etag = _etag(info.etag)
    if_match = params.get("IfMatch")
    if if_match is not None and if_match != "*" and _etag(if_match) != etag:
        return _error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold", Condition="If-Match")
    body = {
        "AcceptRanges": "bytes",
        "LastModified": _time(info.last_modified_ms),
        "ETag": etag,
        "ContentType": params.get("ResponseContentType", "binary/octet-stream"),
        "Metadata": {},
    }
    status = 200
    range_header = params.get("Range")
    if range_header:
        match = _RANGE.match(range_header.strip())
        if not match or match.group(1) == match.group(2) == "":
            return _unsupported(f"Range {range_header!r} of S3 call GetObject (get_object)")
        first, last = match.group(1), match.group(2)
        if first == "":
            start = max(info.size - int(last), 0)
            end = info.size - 1
        else:
            start = int(first)
            end = min(int(last), info.size - 1) if last else info.size - 1
        if start >= info.size:
            return _error(416, "InvalidRange", "The requested range is not satisfiable", RangeRequested=range_header, ActualObjectSize=str(info.size))
        data, _ = client.get_range(key, start, end - start + 1)
        body["ContentRange"] = f"bytes {start}-{start + len(data) - 1}/{info.size}"
        status = 206
    else:
        data = client.get(key, size_hint=info.size)
    body["ContentLength"] = len(data)
    body["Body"] = StreamingBody(io.BytesIO(data), len(data))
    return _ok(body, status)


def _read_body(body):
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    return body.read()


def _put_object(state, params):
    key = params["Key"]
    data = _read_body(params.get("Body"))
    client = state.client
    if state.write_behind:
        client.put_behind(key, data)
        return _ok({})
    client.put(key, data)
    return _ok({"ETag": _etag(client.head(key).etag)})


def _head_object(state, params):
    info = state.client.head(params["Key"])
    return _ok(
        {
            "AcceptRanges": "bytes",
            "LastModified": _time(info.last_modified_ms),
            "ContentLength": info.size,
            "ETag": _etag(info.etag),
            "ContentType": "binary/octet-stream",
            "Metadata": {},
        }
    )


def _delete_object(state, params):
    state.client.delete(params["Key"])
    return _ok({}, 204)


def _encode_token(backend_token, skip):
    raw = base64.urlsafe_b64encode(backend_token or b"").decode()
    return f"{raw}.{skip}"


def _decode_token(token):
    try:
        raw, skip = token.rsplit(".", 1)
        return base64.urlsafe_b64decode(raw.encode()) or None, int(skip)
    except (ValueError, binascii.Error):
        return None


def _list_objects_v2(state, params):
    client = state.client
    key_prefix = state.key_prefix
    prefix = key_prefix + params.get("Prefix", "")
    max_keys = int(params.get("MaxKeys", 1000))
    start_after = params.get("StartAfter")
    if start_after is not None:
        start_after = key_prefix + start_after
    token, skip = None, 0
    if "ContinuationToken" in params:
        decoded = _decode_token(params["ContinuationToken"])
        if decoded is None:
            return _error(400, "InvalidArgument", "The continuation token provided is incorrect")
        token, skip = decoded
        start_after = None
    page = client.list(prefix, token)
    entries = page.entries[skip:]
    if start_after is not None:
        # Skip whole pages at or before StartAfter.
        while True:
            entries = [e for e in entries if e.key > start_after]
            if entries or page.next_token is None:
                break
            token, skip = page.next_token, 0
            page = client.list(prefix, token)
            entries = page.entries
        skip = len(page.entries) - len(entries)
    chosen = entries[:max_keys]
    body = {
        "Name": params.get("Bucket"),
        "Prefix": params.get("Prefix", ""),
        "MaxKeys": max_keys,
        "KeyCount": len(chosen),
        "EncodingType": params.get("EncodingType"),
    }
    if body["EncodingType"] is None:
        del body["EncodingType"]
    if "ContinuationToken" in params:
        body["ContinuationToken"] = params["ContinuationToken"]
    if "StartAfter" in params:
        body["StartAfter"] = params["StartAfter"]
    if chosen:
        body["Contents"] = [
            {
                "Key": e.key[len(key_prefix) :],
                "LastModified": _time(e.last_modified_ms),
                "ETag": _etag(e.etag),
                "Size": e.size,
                "StorageClass": "STANDARD",
            }
            for e in chosen
        ]
    if len(entries) > len(chosen):
        body["IsTruncated"] = True
        body["NextContinuationToken"] = _encode_token(token, skip + len(chosen))
    elif page.next_token is not None:
        body["IsTruncated"] = True
        body["NextContinuationToken"] = _encode_token(page.next_token, 0)
    else:
        body["IsTruncated"] = False
    return _ok(body)


def _create_multipart_upload(state, params):
    upload_id = uuid.uuid4().hex
    with state.uploads_lock:
        state.uploads[upload_id] = (params["Key"], {})
    user_key = params["Key"][len(state.key_prefix) :]
    return _ok({"Bucket": params["Bucket"], "Key": user_key, "UploadId": upload_id})


def _upload(state, params):
    with state.uploads_lock:
        upload = state.uploads.get(params["UploadId"])
    if upload is None or upload[0] != params["Key"]:
        return None
    return upload


def _no_upload():
    return _error(404, "NoSuchUpload", "The specified upload does not exist")


def _upload_part(state, params):
    upload = _upload(state, params)
    if upload is None:
        return _no_upload()
    data = _read_body(params.get("Body"))
    with state.uploads_lock:
        upload[1][int(params["PartNumber"])] = data
    return _ok({"ETag": _etag(hashlib.md5(data).hexdigest())})


def _complete_multipart_upload(state, params):
    upload = _upload(state, params)
    if upload is None:
        return _no_upload()
    key, parts = upload
    numbers = [int(p["PartNumber"]) for p in params.get("MultipartUpload", {}).get("Parts", [])]
    if not numbers or any(n not in parts for n in numbers):
        return _error(400, "InvalidPart", "One or more of the specified parts could not be found")
    data = b"".join(parts[n] for n in numbers)
    _put_object(state, {"Key": key, "Body": data})
    with state.uploads_lock:
        state.uploads.pop(params["UploadId"], None)
    info = state.client.head(key)
    user_key = key[len(state.key_prefix) :]
    return _ok({"Bucket": params["Bucket"], "Key": user_key, "ETag": _etag(info.etag)})


def _abort_multipart_upload(state, params):
    with state.uploads_lock:
        state.uploads.pop(params["UploadId"], None)
    return _ok({}, 204)


_OPERATIONS = {
    "GetObject": _get_object,
    "PutObject": _put_object,
    "HeadObject": _head_object,
    "DeleteObject": _delete_object,
    "ListObjectsV2": _list_objects_v2,
    "CreateMultipartUpload": _create_multipart_upload,
    "UploadPart": _upload_part,
    "CompleteMultipartUpload": _complete_multipart_upload,
    "AbortMultipartUpload": _abort_multipart_upload,
}

# Parameters any call may carry that change nothing here: checksums (the window is not a
# network; the backend checks what it stores), ownership and payer assertions, SSE-S3
# (the store's own encryption applies).
_IGNORED = {
    "ExpectedBucketOwner",
    "RequestPayer",
    "ChecksumAlgorithm",
    "ChecksumMode",
    "ChecksumType",
    "ChecksumCRC32",
    "ChecksumCRC32C",
    "ChecksumCRC64NVME",
    "ChecksumSHA1",
    "ChecksumSHA256",
    "ContentMD5",
    "ServerSideEncryption",
}

# Per operation: (parameters accepted and honoured or harmless, required parameters).
_PARAMS = {
    "GetObject": ({"Range", "IfMatch", "ResponseContentType"}, ("Bucket", "Key")),
    "PutObject": ({"Body", "ContentLength", "ContentType"}, ("Bucket", "Key")),
    "HeadObject": (set(), ("Bucket", "Key")),
    "DeleteObject": (set(), ("Bucket", "Key")),
    "ListObjectsV2": (
        {"Prefix", "MaxKeys", "ContinuationToken", "StartAfter", "EncodingType", "FetchOwner"},
        ("Bucket",),
    ),
    "CreateMultipartUpload": ({"ContentType"}, ("Bucket", "Key")),
    "UploadPart": ({"Body", "ContentLength"}, ("Bucket", "Key", "UploadId", "PartNumber")),
    "CompleteMultipartUpload": ({"MultipartUpload", "MpuObjectSize"}, ("Bucket", "Key", "UploadId")),
    "AbortMultipartUpload": (set(), ("Bucket", "Key", "UploadId")),
}
