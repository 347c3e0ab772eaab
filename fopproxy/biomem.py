"""Give the memory-BIO buffers of idle connections back to the allocator.

OpenSSL's memory BIOs (`ssl.MemoryBIO`) never shrink: a `BUF_MEM` keeps the largest size it was
ever grown to (plus a third), so a connection keeps, for its whole life, room for the largest
slice of ciphertext it was fed, the largest record it sent and its handshake flight: ≈10 KiB
per connection after API-sized traffic, ≈45 KiB after bulk. Python has no API to shrink them.

`BioReleaser.release` swaps an *empty* BIO's buffer for a fresh, unallocated one through
libcrypto (`BIO_set_mem_buf`, which frees the old one); the next write allocates again. The relay
calls it when a connection has gone idle, so idle connections cost what their TLS state costs,
whatever they carried. It reaches the `BIO *` through CPython's object layout, so `bio_releaser`
checks that layout once per process (a probe BIO must report its own pending count, and be
empty-and-unallocated after a release) and returns None where the check fails: then buffers are
simply kept, as plain CPython does.
"""

from __future__ import annotations

import ctypes
import functools
import ssl

from fopproxy.tls import bind_loaded_library

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
    """libcrypto's BIO buffer functions, bound to the libcrypto CPython's _ssl module loaded."""

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
