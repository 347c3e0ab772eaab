"""The relay's fast path: the raw `_ssl._SSLSocket`, freeing idle memory BIO buffers, and
handing the C heap's free pages back (glibc's malloc_trim).

Each saves work or memory per connection; each falls back to the public object, or to nothing,
where its check fails on this runtime.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import ssl
from collections.abc import Callable
from typing import Any

from fopproxy.native.binding import bind_loaded_library

# What the relay calls on the object `fast_sslobj` returns.
_RELAY_METHODS = ("read", "write", "do_handshake", "version", "cipher", "pending")


_checked_types: dict[type, bool] = {}


def _sslobj_type_ok(kind: type) -> bool:
    ok = _checked_types.get(kind)
    if ok is None:
        ok = _checked_types[kind] = all(
            callable(getattr(kind, n, None)) for n in _RELAY_METHODS
        ) and hasattr(kind, "session_reused")
    return ok


def fast_sslobj(ssl_object: ssl.SSLObject) -> Any:
    """The `_ssl._SSLSocket` behind an SSLObject, or the SSLObject itself.

    The public SSLObject wraps each call in a Python method; calling the C object directly saves
    that on every record. Used only where the private object has every method the relay calls.
    """
    inner = getattr(ssl_object, "_sslobj", None)
    if inner is not None and _sslobj_type_ok(type(inner)):
        return inner
    return ssl_object


@functools.cache
def fast_sslobj_active() -> bool:
    """Whether `fast_sslobj` returns the private object on this runtime."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="probe.invalid")
    return fast_sslobj(probe) is not probe



# ---- memory BIO buffers --------------------------------------------------------------------

_BIO_TYPE_MEM = 1 | 0x0400  # BIO_TYPE_MEM: method 1, a source/sink
_BIO_C_SET_BUF_MEM = 114
_BIO_C_GET_BUF_MEM_PTR = 115
_BIO_CLOSE = 1


class _BufMem(ctypes.Structure):
    """`struct buf_mem_st` (include/openssl/buffer.h), read only to verify a release."""

    _fields_ = (
        ("length", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("max", ctypes.c_size_t),
        ("flags", ctypes.c_ulong),
    )


class BioReleaser:
    """Frees an empty `ssl.MemoryBIO`'s buffer (OpenSSL's BUF_MEM never shrinks by itself).

    Swaps the buffer for a fresh, unallocated one through libcrypto (`BIO_set_mem_buf`, which
    frees the old one); the next write allocates again. Bound to the libcrypto CPython loaded.
    """

    __slots__ = ("_ctrl", "_new_buf", "_offset", "_pending", "_type")

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        self._ctrl = lib.BIO_ctrl
        self._ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self._ctrl.restype = ctypes.c_long
        self._new_buf = lib.BUF_MEM_new
        self._new_buf.argtypes = []
        self._new_buf.restype = ctypes.c_void_p
        self._pending = lib.BIO_ctrl_pending
        self._pending.argtypes = [ctypes.c_void_p]
        self._pending.restype = ctypes.c_size_t
        self._type = lib.BIO_method_type
        self._type.argtypes = [ctypes.c_void_p]
        self._type.restype = ctypes.c_int
        # PySSLMemoryBIO is {PyObject_HEAD; BIO *bio; int eof_written;}: the pointer follows the
        # object header.
        self._offset = object.__basicsize__

    def _pointer(self, bio: ssl.MemoryBIO) -> int | None:
        return ctypes.c_void_p.from_address(id(bio) + self._offset).value

    def release(self, bio: ssl.MemoryBIO) -> bool:
        """Free `bio`'s buffer if it holds no data; False if it holds data or allocation failed."""
        if bio.pending:
            return False
        fresh = self._new_buf()
        if not fresh:
            return False
        self._ctrl(self._pointer(bio), _BIO_C_SET_BUF_MEM, _BIO_CLOSE, fresh)
        return True

    def allocated(self, bio: ssl.MemoryBIO) -> int:
        """Bytes the BIO's buffer holds room for (its `BUF_MEM.max`)."""
        buf = ctypes.c_void_p()
        self._ctrl(self._pointer(bio), _BIO_C_GET_BUF_MEM_PTR, 0, ctypes.byref(buf))
        if not buf.value:
            return 0
        return int(_BufMem.from_address(buf.value).max)

    def verify(self) -> bool:
        """The layout and the calls do what we assume, on a probe BIO."""
        if ssl.MemoryBIO.__basicsize__ < self._offset + ctypes.sizeof(ctypes.c_void_p):
            return False
        probe = ssl.MemoryBIO()
        probe.write(b"x" * 1000)
        pointer = self._pointer(probe)
        if not pointer or self._type(pointer) != _BIO_TYPE_MEM:
            return False
        if self._pending(pointer) != 1000 or self.allocated(probe) < 1000:
            return False
        if self.release(probe):  # holds data: must refuse
            return False
        probe.read()
        if not self.release(probe) or self.allocated(probe) != 0 or probe.pending != 0:
            return False
        probe.write(b"abc")
        return probe.read() == b"abc" and self._pending(pointer) == 0


@functools.cache
def bio_releaser() -> BioReleaser | None:
    """The process's releaser, or None where libcrypto is out of reach or the check fails."""
    releaser = bind_loaded_library("/libcrypto.so", BioReleaser)
    return releaser if releaser is not None and releaser.verify() else None


# ---- the C heap ----------------------------------------------------------------------------


@functools.cache
def malloc_trim() -> Callable[[], None] | None:
    """glibc's malloc_trim(0), bound once per process; None where there is none (musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError:
        return None
    if function is None:
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    if function(0) not in (0, 1):  # returns 1 if memory was released, else 0
        return None

    def trim() -> None:
        function(0)

    return trim

