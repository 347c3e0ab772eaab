"""`fopproxy demo`: a working TLS endpoint in one command, for a first look.

It makes a throw-away ECDSA + RSA pair for `localhost`, starts a tiny HTTP backend on loopback in
the same event loop, and runs the real proxy in front of it with the default profile.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

import uvloop

from fopproxy.app import serve_worker
from fopproxy.config import Config, load_config
from fopproxy.process import worker_hooks
from fopproxy.selfsigned import self_signed, write_pair

DEMO_NAME = "localhost"


class DemoBackend(asyncio.Protocol):
    """Answers each HTTP/1.1 request with a small JSON body describing it (keep-alive aware)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer and self.transport is not None:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            body = json.dumps(
                {"backend": "fopproxy demo backend (plain HTTP)", "request": request_line}
            ).encode() + b"\n"
            close = b"connection: close" in head.lower()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n".encode()
                + (b"connection: close\r\n" if close else b"")
                + b"\r\n"
                + body
            )
            if close:
                self.transport.close()


def write_demo_files(folder: Path, port: int, backend_port: int, metrics_port: int) -> Path:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    ecdsa = self_signed([DEMO_NAME, "127.0.0.1"], "ecdsa")
    rsa = self_signed([DEMO_NAME, "127.0.0.1"], "rsa")
    write_pair(ecdsa, folder / "ecdsa.pem", folder / "ecdsa.key")
    write_pair(rsa, folder / "rsa.pem", folder / "rsa.key")
    (folder / "ca.pem").write_bytes(ecdsa.cert_pem + rsa.cert_pem)
    config = folder / "proxy.yaml"
    config.write_text(
        f"""listen: "127.0.0.1:{port}"
backend: "127.0.0.1:{backend_port}"
server_name: "{DEMO_NAME}"
tls:
  certificates:
    - {{cert: ecdsa.pem, key: ecdsa.key}}
    - {{cert: rsa.pem, key: rsa.key}}
metrics:
  listen: "127.0.0.1:{metrics_port}"
"""
    )
    return config


async def _demo(port: int, metrics_port: int, folder: Path) -> int:
    loop = asyncio.get_running_loop()
    backend = await loop.create_server(DemoBackend, "127.0.0.1", 0)
    backend_port = backend.sockets[0].getsockname()[1]
    config: Config = load_config(write_demo_files(folder, port, backend_port, metrics_port))
    print(
        f"fopproxy demo: TLS on https://{DEMO_NAME}:{port}/ -> demo backend "
        f"127.0.0.1:{backend_port}\n"
        f"  try:     curl --cacert {folder / 'ca.pem'} https://{DEMO_NAME}:{port}/\n"
        f"  metrics: curl http://127.0.0.1:{metrics_port}/metrics\n"
        "  stop:    Ctrl-C",
        file=sys.stderr,
        flush=True,
    )
    try:
        return await serve_worker(config, hooks=worker_hooks(config))
    finally:
        backend.close()


def default_folder() -> Path:
    """A fixed folder, so the README's curl line (--cacert /tmp/fopproxy-demo/ca.pem) works."""
    return Path(tempfile.gettempdir()) / "fopproxy-demo"


def run_demo(port: int, metrics_port: int, folder: Path | None = None) -> int:
    return uvloop.run(_demo(port, metrics_port, folder or default_folder()))
