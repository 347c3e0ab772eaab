"""Real plain-TCP backends on loopback for the proxy to talk to, each in its own thread."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ThreadedBackend:
    """Accepts connections and runs `handler(conn)` per connection in a thread."""

    def __init__(self, handler: Callable[[socket.socket], None], host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(1024)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def __enter__(self) -> ThreadedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def echo_handler(conn: socket.socket) -> None:
    """Echo until the client half-closes, then half-close back (exercises both EOF paths)."""
    while True:
        data = conn.recv(65536)
        if not data:
            break
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def http_handler(conn: socket.socket) -> None:
    """A minimal HTTP/1.1 server: 200 with a fixed body per request, keep-alive."""
    buffer = b""
    while True:
        while b"\r\n\r\n" not in buffer:
            data = conn.recv(65536)
            if not data:
                return
            buffer += data
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        body = b"hello from the backend\n"
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        if b"connection: close" in head.lower():
            return
