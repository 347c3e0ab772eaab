"""Backends that read the PROXY protocol: nginx and HAProxy (Debian's packages) and our own reader.

nginx and HAProxy are the peers real deployments put behind a TLS proxy; each answers an HTTP
request with what *it* decoded from the header, so a test compares their reading with the
client it knows. `RecordingProxyBackend` parses with tests/support/ppparse.py and keeps every
header it read, for the TLVs neither nginx 1.22 nor HAProxy 2.6 expose.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

from tests.support.backends import ThreadedBackend, free_port
from tests.support.ppparse import ProxyHeader, ProxyHeaderError, read_header
from tests.support.proxy import stop_process, wait_for_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy")


class _Process:
    proc: subprocess.Popen[str]
    folder: Path
    port: int
    log_name = "error.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.folder / self.log_name
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, timeout=10)

    def __enter__(self) -> _Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NginxProxyProtocolBackend(_Process):
    """nginx with `listen ... proxy_protocol`: answers `<client addr> <client port> <server addr>
    <server port> <remote_addr>` as nginx read them (remote_addr through the realip module)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        temp = folder / "tmp"
        temp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = folder / "nginx.conf"
        conf.write_text(f"""
master_process off;
error_log {folder}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy;
  fastcgi_temp_path {temp}/fastcgi; uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
  server {{
    listen 127.0.0.1:{self.port} proxy_protocol;
    set_real_ip_from 127.0.0.0/8;
    real_ip_header proxy_protocol;
    location / {{
      return 200 "$proxy_protocol_addr $proxy_protocol_port $proxy_protocol_server_addr $proxy_protocol_server_port $remote_addr\\n";
    }}
  }}
}}
""")
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log"),
             "-g", f"daemon off; pid {folder}/nginx.pid;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout=15, proc=self.proc)
        except (TimeoutError, RuntimeError):
            self.stop()
            raise RuntimeError(f"nginx did not start: {self.log()}") from None

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT, timeout=10)


class HAProxyBackend(_Process):
    """HAProxy with `accept-proxy`: answers `<src> <src_port> <dst> <dst_port> <authority>` as
    HAProxy read them (`fc_pp_authority` is the v2 AUTHORITY TLV, i.e. our SNI)."""

    log_name = "haproxy.log"

    def __init__(self, folder: Path) -> None:
        if HAPROXY is None:
            raise RuntimeError("haproxy is not installed (.ci/setup.d/60-clientauth.sh)")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = folder / "haproxy.cfg"
        conf.write_text(f"""
global
  log stderr local0 warning
defaults
  mode http
  log global
  timeout connect 2s
  timeout client 10s
  timeout server 10s
frontend pp
  bind 127.0.0.1:{self.port} accept-proxy
  http-request return status 200 content-type text/plain lf-string "%[src] %[src_port] %[dst] %[dst_port] %[fc_pp_authority]\\n"
""")
        with (folder / self.log_name).open("w") as log:
            self.proc = subprocess.Popen(
                [HAPROXY, "-f", str(conf), "-db"], stdout=log, stderr=subprocess.STDOUT, text=True
            )
        try:
            wait_for_port("127.0.0.1", self.port, timeout=15, proc=self.proc)
        except (TimeoutError, RuntimeError):
            self.stop()
            raise RuntimeError(f"haproxy did not start: {self.log()}") from None


def http_get_answer(sock: socket.socket, host: str = "backend") -> str:
    """Send a one-shot HTTP/1.0 GET on `sock` and return the body of the answer."""
    sock.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise AssertionError(f"unexpected answer: {data[:300]!r}")
    return body.decode().strip()


class RecordingProxyBackend(ThreadedBackend):
    """Reads one PROXY header per connection with the independent reader, records it (or the
    parse error), then echoes the rest of the stream back."""

    def __init__(self) -> None:
        self.headers: list[ProxyHeader] = []
        self.errors: list[str] = []
        self.first_bytes: list[bytes] = []
        self.lock = threading.Lock()
        super().__init__(self._handle)

    def _handle(self, conn: socket.socket) -> None:
        try:
            header = read_header(conn)
        except (ProxyHeaderError, OSError, ValueError) as exc:
            with self.lock:
                self.errors.append(str(exc))
            return
        with self.lock:
            self.headers.append(header)
        first = True
        while data := conn.recv(65536):
            if first:
                with self.lock:
                    self.first_bytes.append(data)
                first = False
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)


def describe(header: ProxyHeader) -> dict[str, object]:
    """What a header said, as plain data (the HTTP backend's answer body)."""
    ssl = header.ssl
    return {
        "version": header.version, "family": header.family, "src": header.src,
        "sport": header.sport, "dst": header.dst, "dport": header.dport,
        "authority": header.authority,
        "ssl": None if ssl is None else {
            "client": ssl.client, "verify": ssl.verify, "version": ssl.version, "cn": ssl.cn,
            "cipher": ssl.cipher, "sig_alg": ssl.sig_alg, "key_alg": ssl.key_alg,
        },
    }


class ProxyHttpBackend(ThreadedBackend):
    """Reads one PROXY header per connection (independent reader), then answers one HTTP
    request with the decoded header as JSON; keeps every header and what came after it."""

    def __init__(self) -> None:
        self.headers: list[ProxyHeader] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        super().__init__(self._handle)

    def _handle(self, conn: socket.socket) -> None:
        try:
            header = read_header(conn)
        except (ProxyHeaderError, OSError, ValueError) as exc:
            with self.lock:
                self.errors.append(str(exc))
            return
        with self.lock:
            self.headers.append(header)
        request = b""
        while b"\r\n\r\n" not in request:
            data = conn.recv(65536)
            if not data:
                return
            request += data
        if not request.startswith(b"GET "):
            with self.lock:
                self.errors.append(f"not an HTTP request after the header: {request[:40]!r}")
            return
        body = json.dumps(describe(header)).encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
