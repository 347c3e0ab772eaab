"""Real TLS servers on loopback standing in for Google in the outbound tests.

Each accepted connection: the ClientHello is peeked and parsed (what the client offered, seen
from the server's side), then Python's ssl runs the server handshake, and `handler` talks to the
client. Every byte of application data the server received is kept, so a test can show that
nothing of a request reached a server the client refused.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.support.clienthello import ClientHello, peek_client_hello


@dataclass
class Seen:
    """What one connection looked like from the server."""

    hello: ClientHello | None = None
    handshake_error: str | None = None
    version: str | None = None
    cipher: str | None = None
    received: bytearray = field(default_factory=bytearray)
    client_cert: dict[str, object] | None = None
    resumed: bool = False


Handler = Callable[[ssl.SSLSocket, Seen], None]


def read_all(sock: ssl.SSLSocket, seen: Seen) -> None:
    """Read until the client's close_notify or FIN, keeping every byte."""
    while True:
        try:
            data = sock.recv(65536)
        except (ssl.SSLError, OSError):
            return
        if not data:
            return
        seen.received += data


def echo(sock: ssl.SSLSocket, seen: Seen) -> None:
    """Echo until the client half-closes (close_notify), then close_notify back."""
    while True:
        try:
            data = sock.recv(65536)
        except (ssl.SSLError, OSError):
            return
        if not data:
            break
        seen.received += data
        sock.sendall(data)
    with contextlib.suppress(ssl.SSLError, OSError):
        sock.unwrap()


class TLSServer:
    """A threaded TLS server; `seen` has one entry per accepted connection, in order."""

    def __init__(self, ctx: ssl.SSLContext, handler: Handler = read_all,
                 host: str = "127.0.0.1") -> None:
        self.ctx = ctx
        self.handler = handler
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(256)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self.finished = 0
        self._stop = False
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            seen = Seen()
            with self._lock:
                self.seen.append(seen)
            threading.Thread(target=self._run, args=(conn, seen), daemon=True).start()

    def _run(self, conn: socket.socket, seen: Seen) -> None:
        try:
            seen.hello = peek_client_hello(conn)
            conn.settimeout(30)
            try:
                tls = self.ctx.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                seen.handshake_error = getattr(exc, "reason", None) or str(exc)
                return
            seen.version = tls.version()
            cipher = tls.cipher()
            seen.cipher = cipher[0] if cipher else None
            seen.resumed = tls.session_reused
            seen.client_cert = tls.getpeercert() or None
            try:
                self.handler(tls, seen)
            finally:
                tls.close()
        finally:
            conn.close()
            with self._done:
                self.finished += 1
                self._done.notify_all()

    def wait_finished(self, count: int, timeout: float = 10.0) -> None:
        """Wait until `count` connections have been fully handled (handler returned)."""
        with self._done:
            self._done.wait_for(lambda: self.finished >= count, timeout)

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def __enter__(self) -> TLSServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def server_context(cert: str, key: str, **settings: object) -> ssl.SSLContext:
    """A server context; `ciphers`, `minimum_version`, `maximum_version`, `cafile` (to require
    a client certificate) may be given. By default it accepts any suite the client offers."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_ciphers(str(settings.pop("ciphers", "ALL:@SECLEVEL=0")))
    cafile = settings.pop("cafile", None)
    if cafile is not None:
        ctx.load_verify_locations(str(cafile))
        ctx.verify_mode = ssl.CERT_REQUIRED
    for key_name, value in settings.items():
        setattr(ctx, key_name, value)
    return ctx
