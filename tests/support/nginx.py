"""A real nginx (the Debian package) on loopback, as a TLS server `fopproxy scan` did not write."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.support.backends import free_port
from tests.support.proxy import stop_process, wait_for_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SIX = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256"
)


class Nginx:
    """nginx in the foreground with its own prefix, config and pid file; stopped by PID."""

    def __init__(
        self,
        folder: Path,
        certificates: Sequence[tuple[Path, Path]],
        *,
        protocols: str = "TLSv1.2",
        ciphers: str = SIX,
        server_name: str = "api.example.test",
        prefer_server: bool = True,
        curves: str = "X25519:prime256v1:secp384r1",
        extra: str = "",
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tmp").mkdir(exist_ok=True)
        self.port = free_port()
        certs = "\n".join(
            f"      ssl_certificate {cert};\n      ssl_certificate_key {key};"
            for cert, key in certificates
        )
        temp = folder / "tmp"
        conf = f"""
master_process off;
error_log {folder}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy;
  fastcgi_temp_path {temp}/fastcgi; uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
  server {{
      listen 127.0.0.1:{self.port} ssl;
      server_name {server_name};
{certs}
      ssl_protocols {protocols};
      ssl_ciphers "{ciphers}";
      ssl_prefer_server_ciphers {"on" if prefer_server else "off"};
      ssl_ecdh_curve {curves};
      {extra}
      location / {{ return 200 "ok\\n"; }}
  }}
}}
"""
        self.conf = folder / "nginx.conf"
        self.conf.write_text(conf)
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(folder), "-c", str(self.conf), "-e", str(folder / "error.log"),
             "-g", f"daemon off; pid {folder}/nginx.pid;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout=15, proc=self.proc)
        except (TimeoutError, RuntimeError):
            self.stop()
            raise RuntimeError(f"nginx did not start: {self.error_log()}") from None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT, timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> Nginx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
