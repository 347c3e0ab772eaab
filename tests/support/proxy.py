"""Start the real `fopproxy` process (from this checkout) on loopback and stop it by PID."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def fopproxy_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fopproxy", *args]


def fopproxy_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(*args: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a short fopproxy command (check, scan, cert, a bad config) to completion."""
    return subprocess.run(
        fopproxy_command(*args), capture_output=True, text=True, timeout=timeout, env=fopproxy_env(), **kwargs
    )


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 30.0, kill_after: float = 5.0) -> int:
    """Signal `proc` (by PID), wait up to `timeout` s, then SIGKILL it; returns its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(kill_after)
    return proc.returncode


def wait_for_port(host: str, port: int, timeout: float = 15.0, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"fopproxy exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


class ProxyProcess:
    """A running fopproxy with the given config dict, written to `folder/proxy.yaml`."""

    def __init__(
        self, folder: Path, config: dict[str, Any], *, wait: bool = True, env: dict[str, str] | None = None,
        nofile: int | None = None, soft_nofile_only: bool = False, wrapper: Sequence[str] = (),
    ) -> None:
        self.folder = folder
        self.config = config
        self.config_path = folder / "proxy.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        # An outbound-only config has no TLS listener: its first outbound listener stands in.
        listen = config.get("listen") or config["outbound"][0]["listen"]
        host, _, port = str(listen).rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.log_path = folder / "fopproxy.log"
        self._log = self.log_path.open("w")
        command = fopproxy_command("-c", str(self.config_path))
        if nofile:
            # Start under that RLIMIT_NOFILE (the fd-exhaustion tests); `exec` keeps the PID.
            flag = "-Sn" if soft_nofile_only else "-n"
            command = ["/bin/sh", "-c", f'ulimit {flag} {int(nofile)} && exec "$@"', "sh", *command]
        # A program that execs fopproxy in its own process (`strace -D`, for fault injection),
        # so that `pid`, signals and the exit status stay fopproxy's.
        command = [*wrapper, *command]
        self.proc: subprocess.Popen[str] = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            env=fopproxy_env(**(env or {})),
        )
        if wait:
            # Wait for every worker's "listening on" line rather than probing the port: a probe
            # would show up in the handshake-error counters the metrics tests assert on.
            workers = config.get("workers", 1)
            count = workers if isinstance(workers, int) else os.cpu_count() or 1
            try:
                self.wait_for_log("listening on", count=count)
            except Exception:
                self.stop()
                raise

    def wait_for_log(self, text: str, *, count: int = 1, timeout: float = 15.0) -> str:
        """Wait until `text` appears `count` times in the log; return the log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if log.count(text) >= count:
                return log
            if self.proc.poll() is not None:
                raise RuntimeError(f"fopproxy exited with {self.proc.returncode}:\n{log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} x{count} not in the log after {timeout}s:\n{log}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        code = stop_process(self.proc, timeout=timeout)
        self._log.close()
        return code

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def client_context(cafile: Path | None = None, *, verify: bool = True, **settings: Any) -> ssl.SSLContext:
    """A client context; `ciphers`, `minimum_version`, `maximum_version` may be given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Debian's and Ubuntu's CPython builds set OP_IGNORE_UNEXPECTED_EOF on every new context, so
    # a TCP end without close_notify reads as a clean end (b"") there, like a close_notify. The
    # tests must tell the two apart (a truncated answer must not look complete): clear it, as
    # python.org builds, openssl s_client and curl never set it.
    ctx.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    if verify and cafile is not None:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ciphers = settings.pop("ciphers", None)
    if ciphers:
        ctx.set_ciphers(ciphers)
    for key, value in settings.items():
        setattr(ctx, key, value)
    return ctx


def tls_connect(host: str, port: int, ctx: ssl.SSLContext, server_name: str | None, timeout: float = 10.0, *, ragged_eof_is_error: bool = False) -> ssl.SSLSocket:
    """A connected TLS socket; with ragged_eof_is_error a TCP end without close_notify raises."""
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_name, suppress_ragged_eofs=not ragged_eof_is_error)
    except BaseException:
        raw.close()
        raise


def read_to_end(sock: ssl.SSLSocket) -> tuple[bytes, str]:
    """Read until the stream ends; says how: 'close_notify', 'eof-without-close_notify' or 'reset'.

    The socket must come from `client_context` (which does not take a bare TCP end for a
    close_notify) and be wrapped with suppress_ragged_eofs=False.
    """
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ssl.SSLEOFError:
        return data, "eof-without-close_notify"
    except ConnectionResetError:
        return data, "reset"
    except ssl.SSLError as exc:
        # Some CPython builds (Debian's 3.11.2) raise OpenSSL 3's unexpected EOF as a plain
        # SSLError rather than SSLEOFError.
        if exc.reason == "UNEXPECTED_EOF_WHILE_READING":
            return data, "eof-without-close_notify"
        raise
    return data, "close_notify"
