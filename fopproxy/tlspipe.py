"""TLS over two memory BIOs: one connection's record layer, with no transport or timer in it.

Why our own TLS layer instead of `create_server(ssl=...)`: asyncio's and uvloop's SSL transports
close without sending the alert OpenSSL queued (CPython gh-98078), so a TLS 1.1 client would see
an EOF instead of `protocol_version`. Driving `SSLObject` over `MemoryBIO` ourselves sends every
alert before the close, answers close_notify, keeps half-close, and lets us bound the buffers.

The pipe is side-neutral (`server_side`): the relay's client connections use it as a server;
an outbound connection can use it as a client. Ciphertext goes in with `incoming.write`,
plaintext comes out of `tls.read`; plaintext goes in with `encrypt` / `tls.write` and
ciphertext leaves by `outgoing.read()`. The caller moves the bytes to and from its transports.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Any

from fopproxy.native import fast_sslobj

if TYPE_CHECKING:
    from fopproxy.native import BioReleaser

log = logging.getLogger("fopproxy.conn")

# Memory BIOs keep their largest size for the life of the connection, so slice sizes decide the
# resident size: ciphertext is fed to the incoming BIO, and plaintext given to SSL_write (one
# record each, drained from the outgoing BIO at once), in slices of SMALL_SLICE until the
# connection has moved BULK_AFTER bytes that way, then in full 16 KiB records. API-sized
# exchanges keep ≈5 KiB BIOs; bulk transfers get the fewest records and calls per byte (measured
# trade-off in docs/PERFORMANCE.md). The same idea as dynamic TLS record sizing.
SMALL_SLICE = 4 * 1024
TLS_SLICE = 16 * 1024
BULK_AFTER = 256 * 1024
# SSL_read returns at most one record's plaintext; asking for more costs nothing.
SSL_READ_SIZE = 16 * 1024 + 256


class TLSPipe:
    """An SSLObject, its two BIOs, the C-level fast path and the slice sizes of each direction."""

    __slots__ = ("in_slice", "incoming", "out_slice", "outgoing", "ssl", "tls")

    def __init__(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        # A server context's sslobject_class is tls.ServerSSLObject (tls.build_context).
        ssl_object = context.wrap_bio(
            self.incoming, self.outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self.ssl = ssl_object
        # SSLObject.read/write are one-line Python wrappers around the C object's methods (same
        # signatures); calling those directly saves a Python frame per record. Fall back to the
        # public object should a CPython ever not have it.
        self.tls: Any = fast_sslobj(ssl_object)
        self.in_slice = SMALL_SLICE
        self.out_slice = SMALL_SLICE

    def handshake(self) -> bool:
        """One handshake step: True once finished, False while waiting for the peer.

        Raises ssl.SSLError when it failed; the alert OpenSSL produced is in `outgoing`.
        """
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def version(self) -> str:
        return self.tls.version() or "-"

    def resumed(self) -> bool:
        """Whether the handshake resumed a session (ID, ticket or TLS 1.3 PSK)."""
        return bool(self.tls.session_reused)

    def cipher(self) -> str:
        cipher = self.tls.cipher()
        return cipher[0] if cipher else "-"

    def server_name(self) -> str | None:
        """The SNI the peer sent (set by the server's SNI callback), if any."""
        return getattr(self.ssl, "sni", None)

    def feed_slice(self, moved: int) -> int:
        """Slice size for feeding ciphertext, growing to whole records once `moved` is bulk."""
        step = self.in_slice
        if step < TLS_SLICE and moved >= BULK_AFTER:
            step = self.in_slice = TLS_SLICE
        return step

    def read_records(self, data: bytes) -> tuple[list[bytes], bool]:
        """`data` (one record's plaintext, just read) and every further record the incoming BIO
        holds; the flag says the peer sent close_notify. A bad record raises ssl.SSLError."""
        incoming = self.incoming
        read = self.tls.read
        chunks: list[bytes] = []
        finished = False
        try:
            # One SSL_read returns one whole record (SSL_READ_SIZE is above the largest), so
            # nothing stays buffered inside OpenSSL: an empty incoming BIO means done, without
            # asking SSL_pending or waiting for SSLWantReadError.
            while data:
                chunks.append(data)
                if not incoming.pending:
                    break
                data = read(SSL_READ_SIZE)
            else:
                # CPython returns b"" (not SSLZeroReturnError) for a clean close_notify.
                finished = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            finished = True
        return chunks, finished

    def encrypt(self, view: memoryview, moved: int) -> list[bytes]:
        """Encrypt more than one slice: the records' ciphertext, for one writelines."""
        step = self.out_slice
        if step < TLS_SLICE and moved >= BULK_AFTER:
            step = self.out_slice = TLS_SLICE
        write = self.tls.write
        out = self.outgoing
        chunks = []
        offset = 0
        nbytes = len(view)
        while offset < nbytes:
            # SSL_MODE_ENABLE_PARTIAL_WRITE: one record per call, so honour the count.
            offset += write(view[offset : offset + step])
            chunks.append(out.read())
        return chunks

    def close_notify(self) -> bytes:
        """Our close_notify (once; the peer's answer is not awaited), as bytes to send."""
        try:
            self.ssl.unwrap()  # once per connection: the public API is worth its frame here
        except ssl.SSLWantReadError:
            pass  # close_notify written; the peer's answer is not needed to send ours
        except (ssl.SSLError, ValueError) as exc:
            log.debug("close_notify not sent: %s", exc)
        return self.outgoing.read()

    def release(self, releaser: BioReleaser) -> bool:
        """Give both BIOs' buffers back (a quiet connection); True if anything was freed."""
        return releaser.release(self.incoming) | releaser.release(self.outgoing)
