"""`fopproxy demo`: a working TLS endpoint in one command, for a first look.

It makes a throw-away ECDSA + RSA pair for `localhost`, starts a tiny HTTP backend on loopback in
the same event loop, and runs the real proxy in front of it with the default profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import uvloop

from fopproxy.app import serve_worker
from fopproxy.config import Config, load_config
from fopproxy.errors import FopproxyError
from fopproxy.process import worker_hooks
from fopproxy.selfsigned import self_signed

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


class DemoFolderError(FopproxyError):
    """`demo --dir` names a folder that another user could tamper with."""


def _write_private(folder: Path, name: str, data: bytes, mode: int) -> None:
    """Write `folder/name` with `mode`, never through a symlink (O_NOFOLLOW), never wider."""
    fd = os.open(
        folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode
    )
    try:
        os.fchmod(fd, mode)  # an existing file keeps its old mode through O_CREAT
        os.write(fd, data)
    finally:
        os.close(fd)


def checked_folder(folder: Path) -> Path:
    """`--dir`: made 0700 if missing; if present, a real folder of ours that only we can write."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700, parents=True)
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise DemoFolderError(f"demo --dir {folder}: not a folder (a symlink or a file)")
    if info.st_uid != os.geteuid():
        raise DemoFolderError(f"demo --dir {folder}: owned by uid {info.st_uid}, not by us")
    if info.st_mode & 0o022:
        raise DemoFolderError(
            f"demo --dir {folder}: others may write there (mode {info.st_mode & 0o777:o})"
        )
    return folder


def write_demo_files(folder: Path, port: int, backend_port: int, metrics_port: int) -> Path:
    """Keys 0600 and certificates in `folder` (private to us, see `checked_folder`)."""
    ecdsa = self_signed([DEMO_NAME, "127.0.0.1"], "ecdsa")
    rsa = self_signed([DEMO_NAME, "127.0.0.1"], "rsa")
    for name, issued in (("ecdsa", ecdsa), ("rsa", rsa)):
        _write_private(folder, f"{name}.key", issued.key_pem, 0o600)
        _write_private(folder, f"{name}.pem", issued.cert_pem, 0o644)
    _write_private(folder, "ca.pem", ecdsa.cert_pem + rsa.cert_pem, 0o644)
    config = f"""listen: "127.0.0.1:{port}"
backend: "127.0.0.1:{backend_port}"
server_name: "{DEMO_NAME}"
tls:
  certificates:
    - {{cert: ecdsa.pem, key: ecdsa.key}}
    - {{cert: rsa.pem, key: rsa.key}}
metrics:
  listen: "127.0.0.1:{metrics_port}"
"""
    _write_private(folder, "proxy.yaml", config.encode(), 0o644)
    return folder / "proxy.yaml"


def curl_command(folder: Path, port: int) -> str:
    """The line README tells users to paste; printed by the demo with its own folder in it."""
    return f"curl --cacert {folder / 'ca.pem'} https://{DEMO_NAME}:{port}/"


async def _demo(port: int, metrics_port: int, folder: Path) -> int:
    loop = asyncio.get_running_loop()
    backend = await loop.create_server(DemoBackend, "127.0.0.1", 0)
    backend_port = backend.sockets[0].getsockname()[1]
    config: Config = load_config(write_demo_files(folder, port, backend_port, metrics_port))
    print(
        f"fopproxy demo: TLS on https://{DEMO_NAME}:{port}/ -> demo backend "
        f"127.0.0.1:{backend_port}\n"
        f"  CA:      {folder / 'ca.pem'} (a private folder, removed when the demo stops)\n"
        f"  try:     {curl_command(folder, port)}\n"
        f"  metrics: curl http://127.0.0.1:{metrics_port}/metrics\n"
        "  stop:    Ctrl-C",
        file=sys.stderr,
        flush=True,
    )
    try:
        return await serve_worker(config, hooks=worker_hooks(config))
    finally:
        backend.close()


def run_demo(port: int, metrics_port: int, folder: Path | None = None) -> int:
    """Serve the demo; without `folder`, in a fresh private temporary folder removed at the end.

    Never a fixed name under /tmp: another local user could create it first, or plant symlinks
    in it that a write would follow.
    """
    if folder is not None:
        return uvloop.run(_demo(port, metrics_port, checked_folder(folder)))
    fresh = Path(tempfile.mkdtemp(prefix="fopproxy-demo-"))  # 0700, created by us, never reused
    try:
        return uvloop.run(_demo(port, metrics_port, fresh))
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
