"""A plain HTTP/1.1 backend on loopback for http-mode tests (the standard library's server).

It records every request it *completed reading* (method, path, headers, body length and digest),
so a test can tell that nothing of a refused request reached it. Routes:
- `/headers`: the request headers as JSON pairs, in order;
- `/bytes/N` (`?chunked=1`): N bytes of a known pattern, Content-Length or chunked, streamed;
- `/upload`: reads the body (Content-Length or chunked) and answers its length and SHA-256;
- any route with `?stall=1`: waits 1.5 s before reading the request body;
- `/seq/I` (`?chunked=1`): the text `I`;
- `/sleep/S`: answers after S seconds;
- `/close`: answers with Connection: close;
- `/reset`: resets the connection without answering.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATTERN = bytes(range(256)) * 256  # 64 KiB


def pattern_digest(size: int) -> str:
    digest = hashlib.sha256()
    left = size
    while left:
        piece = PATTERN[: min(left, len(PATTERN))]
        digest.update(piece)
        left -= len(piece)
    return digest.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are two writes: no 40 ms delayed-ACK stalls
    server: RecordingServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> tuple[int, str]:
        digest = hashlib.sha256()
        total = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    break
                left = size
                while left:
                    data = self.rfile.read(min(left, 65536))
                    if not data:
                        raise ConnectionError("body cut short")
                    digest.update(data)
                    left -= len(data)
                total += size
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                data = self.rfile.read(min(left, 65536))
                if not data:
                    raise ConnectionError("body cut short")
                digest.update(data)
                total += len(data)
                left -= len(data)
        return total, digest.hexdigest()

    def _send(self, status: int, body: bytes, *, chunked: bool = False, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        if chunked:
            if body:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.wfile.write(body)

    def _handle(self) -> None:
        if "stall=1" in self.path:
            time.sleep(1.5)  # a backend slow to read the body: the proxy must not buffer it
        size, digest = self._read_body()
        path, _, query = self.path.partition("?")
        self.server.record(self.command, self.path, self.headers.items(), size, digest)
        chunked = "chunked=1" in query
        parts = path.strip("/").split("/")
        if parts[0] == "headers":
            self._send(200, json.dumps(self.headers.items()).encode())
        elif parts[0] == "bytes":
            self._stream(int(parts[1]), chunked=chunked)
        elif parts[0] == "upload":
            self._send(200, f"{size} {digest}".encode())
        elif parts[0] == "seq":
            self._send(200, parts[1].encode(), chunked=chunked)
        elif parts[0] == "sleep":
            time.sleep(float(parts[1]))
            self._send(200, b"late\n")
        elif parts[0] == "close":
            self._send(200, b"bye\n", close=True)
        elif parts[0] == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
        else:
            self._send(404, b"no such route\n")

    def _stream(self, size: int, *, chunked: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command == "HEAD":
            return
        left = size
        while left:
            piece = PATTERN[: min(left, len(PATTERN))]
            if chunked:
                self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
            else:
                self.wfile.write(piece)
            left -= len(piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _handle


class RecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        with self._lock:
            self.connections += 1
        return conn, address

    def record(self, method: str, path: str, headers: list[tuple[str, str]], size: int, digest: str) -> None:
        with self._lock:
            self.requests.append({"method": method, "path": path, "headers": headers, "size": size, "digest": digest})

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
