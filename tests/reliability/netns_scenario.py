"""Runs inside a network namespace the test created: backend, proxy and clients all on that
namespace's own loopback, which carries the packet loss / rate limit. Prints one JSON result.

Usage: python3 -m tests.reliability.netns_scenario MODE FOLDER (MODE: loss, rate, latency).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.conftest import SERVER_NAME
from tests.reliability.support import AsyncBackend, echo, recv_exact
from tests.support.backends import free_port
from tests.support.proxy import ProxyProcess, client_context


class DelayRelay:
    """A TCP relay that holds every chunk for `delay` seconds in each direction (added latency)."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target = target
        self.delay = delay
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Each chunk is released `delay` after it arrived; a queue keeps chunks in flight,
            # so latency is added without capping throughput at one chunk per delay.
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            async def release() -> None:
                while True:
                    due, data = await queue.get()
                    await asyncio.sleep(max(0.0, due - loop.time()))
                    if not data:
                        writer.write_eof()
                        return
                    writer.write(data)
                    await writer.drain()

            releasing = asyncio.ensure_future(release())
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + self.delay, data))
            queue.put_nowait((loop.time() + self.delay, b""))
            await releasing

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            try:
                await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            except OSError:
                pass
            finally:
                writer.close()
                up_writer.close()

        async def start() -> None:
            await asyncio.start_server(handle, "127.0.0.1", self.port)
            ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()


def transfer(port: int, ctx: ssl.SSLContext, size: int, timeout: float) -> tuple[bool, float]:
    """Echo `size` random bytes; (intact, seconds). One asyncio task writes while another reads:
    an SSLSocket must not be used from two threads at once."""
    payload = os.urandom(size)

    async def run() -> bytes:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname=SERVER_NAME
        )

        async def send() -> None:
            writer.write(payload)
            await writer.drain()

        sending = asyncio.ensure_future(send())
        received = await reader.readexactly(size)
        await sending
        writer.close()
        return received

    started = time.monotonic()
    try:
        received = asyncio.run(asyncio.wait_for(run(), timeout))
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as exc:
        print(f"transfer failed: {exc!r}", file=sys.stderr)
        return False, time.monotonic() - started
    ok = hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    return ok, time.monotonic() - started


def handshake(port: int, ctx: ssl.SSLContext, timeout: float) -> tuple[str, float]:
    started = time.monotonic()
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        with ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as sock:
            sock.sendall(b"ping")
            outcome = "ok" if recv_exact(sock, 4) == b"ping" else "bad"
    except (ssl.SSLError, OSError) as exc:
        outcome = f"failed: {type(exc).__name__}"
    return outcome, time.monotonic() - started


def main(mode: str, folder: Path) -> dict[str, Any]:
    spec = json.loads((folder / "spec.json").read_text())
    ctx = client_context(Path(spec["cafile"]))
    result: dict[str, Any] = {"mode": mode}
    with AsyncBackend(echo) as backend:
        config = {
            "listen": f"127.0.0.1:{free_port()}",
            "backend": backend.address,
            "server_name": SERVER_NAME,
            "tls": {"certificates": spec["certificates"]},
            "timeouts": spec["timeouts"],
        }
        (folder / mode).mkdir(exist_ok=True)
        with ProxyProcess(folder / mode, config) as proxy:
            if mode in ("loss", "rate"):
                outcomes = [transfer(proxy.port, ctx, spec["size"], 60) for _ in range(spec["count"])]
                result["intact"] = [ok for ok, _ in outcomes]
                result["seconds"] = [round(s, 3) for _, s in outcomes]
            else:
                relay = DelayRelay(("127.0.0.1", proxy.port), spec["delay"])
                result["handshake"] = handshake(relay.port, ctx, 30)
                result["intact"] = []
                result["seconds"] = []
                if result["handshake"][0] == "ok":
                    ok, seconds = transfer(relay.port, ctx, spec["size"], 60)
                    result["intact"] = [ok]
                    result["seconds"] = [round(seconds, 3)]
            proxy.wait_for_log("reason=", count=len(result["intact"]) + ("handshake" in result), timeout=30)
            result["log_reasons"] = [
                line.rsplit("reason=", 1)[1] for line in proxy.log().splitlines() if "reason=" in line
            ]
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2]))))
