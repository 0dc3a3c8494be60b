# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

"""Python client of Nexus's nexus-io device, over libnexus.

>>> import nexus
>>> client = nexus.connect()            # inside a Nexus Linux guest: /dev/mem
>>> client = nexus.connect("/run/nexus/backend.sock", vm_id="tool", tenant="alpha")  # host
>>> client.put("in/a", b"hello")
>>> client.get("in/a")
b'hello'

``nexus.boto3.install()`` sends an unmodified ``boto3.client("s3")``'s calls through it.
"""

import ctypes
import itertools
import os
import platform
import threading
from ctypes import byref, c_size_t, c_uint64, c_void_p
from typing import Iterator, List, NamedTuple, Optional

from . import _native

__all__ = [
    "Client",
    "ObjectInfo",
    "ListPage",
    "NexusError",
    "NotFound",
    "AccessDenied",
    "connect",
]

# Status codes (include/nexus.h, NexusStatus).
OK = 0
NOT_FOUND = 1
ACCESS_DENIED = 2
INVALID_REQUEST = 3
TOO_LARGE = 4
BACKEND_UNAVAILABLE = 5
UPLOAD_FAILED = 6
TIMEOUT = 7
INTERNAL = 8
UNSUPPORTED_VERSION = 9
THROTTLED = 10
INVALID_ARGUMENT = 11
BUFFER_TOO_SMALL = 12
PAYLOAD_TOO_LARGE = 13
OUT_OF_WINDOW_MEMORY = 14
DEVICE = 15
PROTOCOL = 16
CONNECT = 17
UNSUPPORTED = 18
PANIC = 19
OTHER = 20

# Default VM ids of loopback connections: unique in this process.
_vm_ids = itertools.count()

# CPython's way of making a bytes object to fill before anyone sees it
# (PyBytes_FromStringAndSize(NULL, n)); its bytes start at the end of the object's fixed part.
if platform.python_implementation() == "CPython":
    _new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
    _new_bytes.restype = ctypes.py_object
    _new_bytes.argtypes = [c_void_p, ctypes.c_ssize_t]
    _BYTES_DATA = bytes.__basicsize__ - 1
else:
    _new_bytes = None

# The first read of an object goes into a per-thread buffer of this size; larger objects
# are read into a buffer of their own size.
_SCRATCH = 64 * 1024


class NexusError(Exception):
    """A libnexus call failed: ``status`` is its code, ``message`` the library's words."""

    def __init__(self, status: int, message: str, key: Optional[str] = None):
        super().__init__(f"{message} (status {status})")
        self.status = status
        self.message = message
        self.key = key


class NotFound(NexusError):
    """No such object (``NEXUS_STATUS_NOT_FOUND``)."""


class AccessDenied(NexusError):
    """Outside what the tenant may access (``NEXUS_STATUS_ACCESS_DENIED``)."""


_ERRORS = {NOT_FOUND: NotFound, ACCESS_DENIED: AccessDenied}


def _raise(status: int, key: Optional[str] = None):
    lib = _native.lib()
    message = (lib.nexus_last_error_message() or b"").decode("utf-8", "replace")
    if not message:
        message = lib.nexus_strerror(status).decode()
    raise _ERRORS.get(status, NexusError)(status, message, key)


class ObjectInfo(NamedTuple):
    """An object's metadata (``key`` is empty in a ``head`` answer)."""

    key: str
    size: int
    last_modified_ms: int
    etag: str


class ListPage(NamedTuple):
    """One page of a listing; ``next_token`` is None on the last page."""

    entries: List[ObjectInfo]
    next_token: Optional[bytes]


class Client:
    """A libnexus handle. Thread-safe (libnexus serializes the calls on a handle)."""

    def __init__(self, handle: int):
        self._lib = _native.lib()
        self._handle = c_void_p(handle)
        self._local = threading.local()

    @classmethod
    def loopback(cls, control_socket: str, vm_id: str, tenant: str, window_size: int = 0):
        """Attaches as VM ``vm_id`` of ``tenant`` to the nexus-backend listening on
        ``control_socket`` (window_size 0: 64 MiB)."""
        lib = _native.lib()
        out = c_void_p()
        status = lib.nexus_open_loopback(
            os.fsencode(control_socket), vm_id.encode(), tenant.encode(), window_size, byref(out)
        )
        if status != OK:
            _raise(status)
        return cls(out.value)

    @classmethod
    def linux(cls):
        """The nexus-io device of the Linux guest this process runs in (/dev/mem)."""
        lib = _native.lib()
        out = c_void_p()
        status = lib.nexus_open_linux(byref(out))
        if status != OK:
            _raise(status)
        return cls(out.value)

    def close(self):
        """Closes the handle (unflushed write-behind PUTs keep uploading)."""
        handle, self._handle = self._handle, None
        if handle is not None and handle.value:
            self._lib.nexus_close(handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _h(self):
        if self._handle is None:
            raise ValueError("the client is closed")
        return self._handle

    @property
    def max_payload(self) -> int:
        """The largest object one ``put`` writes."""
        return self._lib.nexus_max_payload(self._h())

    def _scratch(self):
        buf = getattr(self._local, "scratch", None)
        if buf is None:
            buf = ctypes.create_string_buffer(_SCRATCH)
            self._local.scratch = buf
        return buf

    def get(self, key: str, size_hint: Optional[int] = None) -> bytes:
        """The whole object. ``size_hint`` (a size from ``head``) reads a large object in
        one pass, straight into the bytes returned."""
        k = key.encode()
        n = c_size_t()
        if size_hint is None or size_hint <= _SCRATCH:
            scratch = self._scratch()
            status = self._lib.nexus_get(self._h(), k, scratch, _SCRATCH, byref(n))
            if status == OK:
                return ctypes.string_at(scratch, n.value)
            if status != BUFFER_TOO_SMALL:
                _raise(status, key)
        elif _new_bytes is not None:
            # The size is known: read straight into the bytes object returned (one copy,
            # from the window), unless the object changed size meanwhile.
            out = _new_bytes(None, size_hint)
            status = self._lib.nexus_get(self._h(), k, id(out) + _BYTES_DATA, size_hint, byref(n))
            if status == OK:
                return out if n.value == size_hint else out[: n.value]
            if status != BUFFER_TOO_SMALL:
                _raise(status, key)
        data = c_void_p()
        status = self._lib.nexus_get_alloc(self._h(), k, byref(data), byref(n))
        if status != OK:
            _raise(status, key)
        try:
            return ctypes.string_at(data, n.value)
        finally:
            self._lib.nexus_buf_free(data, n)

    def get_range(self, key: str, offset: int, length: int):
        """(bytes, object size): at most ``length`` bytes from ``offset``."""
        buf = ctypes.create_string_buffer(max(length, 1))
        n = c_size_t()
        size = c_uint64()
        status = self._lib.nexus_get_range(
            self._h(), key.encode(), offset, buf, length, byref(n), byref(size)
        )
        if status != OK:
            _raise(status, key)
        return ctypes.string_at(buf, n.value), size.value

    def _put(self, function, key: str, data):
        if isinstance(data, str):
            data = data.encode()
        elif not isinstance(data, bytes):
            data = bytes(data)
        status = function(self._h(), key.encode(), data, len(data))
        if status != OK:
            _raise(status, key)

    def put(self, key: str, data) -> None:
        """Writes an object (bytes-like or str); durable when this returns."""
        self._put(self._lib.nexus_put, key, data)

    def put_behind(self, key: str, data) -> None:
        """Writes an object write-behind; ``flush`` waits until it is durable."""
        self._put(self._lib.nexus_put_behind, key, data)

    def head(self, key: str) -> ObjectInfo:
        """The object's metadata."""
        info = _native.ObjectInfoStruct()
        status = self._lib.nexus_head(self._h(), key.encode(), byref(info))
        if status != OK:
            _raise(status, key)
        return ObjectInfo(
            "", info.size, info.last_modified_ms, info.etag[: info.etag_len].decode("utf-8", "replace")
        )

    def delete(self, key: str) -> None:
        """Deletes an object (also fine when it does not exist)."""
        status = self._lib.nexus_delete(self._h(), key.encode())
        if status != OK:
            _raise(status, key)

    def list(self, prefix: str = "", token: Optional[bytes] = None) -> ListPage:
        """One page of the keys under ``prefix``, after ``token`` (a page's next_token)."""
        page = c_void_p()
        token = token or b""
        status = self._lib.nexus_list(self._h(), prefix.encode(), token, len(token), byref(page))
        if status != OK:
            _raise(status)
        try:
            entry = _native.ListEntryStruct()
            entries = []
            for i in range(self._lib.nexus_list_page_len(page)):
                status = self._lib.nexus_list_page_entry(page, i, byref(entry))
                if status != OK:
                    _raise(status)
                entries.append(
                    ObjectInfo(
                        ctypes.string_at(entry.key, entry.key_len).decode("utf-8", "replace"),
                        entry.size,
                        entry.last_modified_ms,
                        (entry.etag or b"").decode("utf-8", "replace"),
                    )
                )
            next_ptr = c_void_p()
            next_len = c_size_t()
            if self._lib.nexus_list_page_next_token(page, byref(next_ptr), byref(next_len)):
                next_token = ctypes.string_at(next_ptr, next_len.value)
            else:
                next_token = None
            return ListPage(entries, next_token)
        finally:
            self._lib.nexus_list_page_free(page)

    def list_all(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, page after page."""
        token = None
        while True:
            page = self.list(prefix, token)
            yield from page.entries
            if page.next_token is None:
                return
            token = page.next_token

    def flush(self) -> None:
        """Waits until every write-behind PUT of this handle is durable."""
        status = self._lib.nexus_flush(self._h())
        if status != OK:
            _raise(status)


def connect(
    control_socket: Optional[str] = None,
    vm_id: Optional[str] = None,
    tenant: Optional[str] = None,
    window_size: int = 0,
) -> Client:
    """A client: over the loopback transport when a control socket is given (or in
    ``NEXUS_CONTROL_SOCKET``, with ``NEXUS_VM_ID`` and ``NEXUS_TENANT``), else the Linux
    guest's device through /dev/mem. A VM id must be unique on the backend while connected:
    the default is ``python-PID-N``."""
    control_socket = control_socket or os.environ.get("NEXUS_CONTROL_SOCKET")
    if control_socket:
        vm_id = vm_id or os.environ.get("NEXUS_VM_ID") or f"python-{os.getpid()}-{next(_vm_ids)}"
        tenant = tenant or os.environ.get("NEXUS_TENANT")
        if not tenant:
            raise ValueError("a tenant is needed (argument or NEXUS_TENANT)")
        return Client.loopback(control_socket, vm_id, tenant, window_size)
    return Client.linux()
