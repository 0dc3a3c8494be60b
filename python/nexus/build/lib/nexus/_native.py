# Copyright 2026 The Nexus Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

"""Loading libnexus and declaring its functions (ctypes, ABI level: no compiler needed).

Where the library comes from, first match wins:

1. ``NEXUS_LIBRARY``: the path of the shared object (for example
   ``target/release/libnexus_capi.so`` of a cargo build, or ``/usr/lib/libnexus.so.0``);
2. ``nexus/lib/libnexus.so.0`` inside this package, when a build bundled it there;
3. ``libnexus.so.0`` through the dynamic loader's search path (``LD_LIBRARY_PATH``,
   ``/etc/ld.so.conf``), where an installed libnexus lives.
"""

import ctypes
import os
import threading
from ctypes import POINTER, c_bool, c_char, c_char_p, c_int, c_size_t, c_uint32, c_uint64, c_void_p

ETAG_CAPACITY = 257
ABI_VERSION = 0


class ObjectInfoStruct(ctypes.Structure):
    _fields_ = [
        ("size", c_uint64),
        ("last_modified_ms", c_uint64),
        ("etag_len", c_size_t),
        ("etag", c_char * ETAG_CAPACITY),
    ]


class ListEntryStruct(ctypes.Structure):
    _fields_ = [
        ("key", c_void_p),
        ("key_len", c_size_t),
        ("size", c_uint64),
        ("last_modified_ms", c_uint64),
        ("etag", c_char_p),
    ]


_SIGNATURES = {
    "nexus_open_loopback": (c_int, [c_char_p, c_char_p, c_char_p, c_uint64, POINTER(c_void_p)]),
    "nexus_open_linux": (c_int, [POINTER(c_void_p)]),
    "nexus_close": (None, [c_void_p]),
    "nexus_max_payload": (c_size_t, [c_void_p]),
    "nexus_get": (c_int, [c_void_p, c_char_p, c_void_p, c_size_t, POINTER(c_size_t)]),
    "nexus_get_range": (
        c_int,
        [c_void_p, c_char_p, c_uint64, c_void_p, c_size_t, POINTER(c_size_t), POINTER(c_uint64)],
    ),
    "nexus_get_alloc": (c_int, [c_void_p, c_char_p, POINTER(c_void_p), POINTER(c_size_t)]),
    "nexus_buf_free": (None, [c_void_p, c_size_t]),
    "nexus_put": (c_int, [c_void_p, c_char_p, c_void_p, c_size_t]),
    "nexus_put_behind": (c_int, [c_void_p, c_char_p, c_void_p, c_size_t]),
    "nexus_head": (c_int, [c_void_p, c_char_p, POINTER(ObjectInfoStruct)]),
    "nexus_delete": (c_int, [c_void_p, c_char_p]),
    "nexus_list": (c_int, [c_void_p, c_char_p, c_void_p, c_size_t, POINTER(c_void_p)]),
    "nexus_list_page_len": (c_size_t, [c_void_p]),
    "nexus_list_page_entry": (c_int, [c_void_p, c_size_t, POINTER(ListEntryStruct)]),
    "nexus_list_page_next_token": (c_bool, [c_void_p, POINTER(c_void_p), POINTER(c_size_t)]),
    "nexus_list_page_free": (None, [c_void_p]),
    "nexus_flush": (c_int, [c_void_p]),
    "nexus_strerror": (c_char_p, [c_int]),
    "nexus_last_error_message": (c_char_p, []),
    "nexus_abi_version": (c_uint32, []),
}

_lock = threading.Lock()
_lib = None


def library_path():
    """The path (or loader name) libnexus is loaded from, per the order above."""
    explicit = os.environ.get("NEXUS_LIBRARY")
    if explicit:
        return explicit
    bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib", "libnexus.so.0")
    if os.path.exists(bundled):
        return bundled
    return "libnexus.so.0"


def lib():
    """libnexus, loaded once and checked for the ABI version this package speaks."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            path = library_path()
            try:
                loaded = ctypes.CDLL(path)
            except OSError as e:
                raise OSError(
                    f"cannot load libnexus from {path!r} ({e}); set NEXUS_LIBRARY to the "
                    "path of libnexus.so"
                ) from e
            for name, (restype, argtypes) in _SIGNATURES.items():
                function = getattr(loaded, name)
                function.restype = restype
                function.argtypes = argtypes
            version = loaded.nexus_abi_version()
            if version != ABI_VERSION:
                raise OSError(f"{path} speaks ABI {version}, this package {ABI_VERSION}")
            _lib = loaded
    return _lib
