#!/usr/bin/env python3
"""The floor: the least a Python TLS relay on uvloop can do, as a yardstick for `bench/`.

Not a product and never deployed. It reads a fopproxy config and serves it with the very same
TLS context (`fopproxy.tls.build_context`: same suites, options, session cache), but relays the
way the issue's throwaway relays did: TLS over `ssl.MemoryBIO` on plain `asyncio.Protocol`s,
whole chunks, no connection logs, no metrics, no timeouts, no connection limit, and it closes
the client at once after the backend's EOF (no half-close). `bench/run.sh --minimal` runs it
next to fopproxy and nginx-stream: its figures show how much of fopproxy's gap to nginx is the
interpreter itself and how much is what fopproxy does on top (docs/PERFORMANCE.md).

    python3 bench/minimal_relay.py -c proxy.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fopproxy.config import TcpAddress, load_config
from fopproxy.tls import build_context


class Backend(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client.backend_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        client = self.client
        client.tls.write(data)
        client.transport.write(client.outgoing.read())

    def eof_received(self) -> bool:
        self.client.close_tls()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class Client(asyncio.Protocol):
    def __init__(self, relay: MinimalRelay) -> None:
        self.relay = relay
        self.backend: asyncio.Transport | None = None
        self.dialing: asyncio.Task[object] | None = None
        self.pending: list[bytes] = []
        self.handshaking = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = self.relay.context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        try:
            if self.handshaking:
                self.tls.do_handshake()
                self.handshaking = False
                self.flush()
                self.relay.dial(self)
            while chunk := self.tls.read(65536):
                if self.backend is None:
                    self.pending.append(chunk)
                else:
                    self.backend.write(chunk)
        except ssl.SSLWantReadError:
            self.flush()
        except ssl.SSLError:
            self.flush()
            self.transport.close()

    def backend_made(self, transport: asyncio.Transport) -> None:
        self.backend = transport
        if self.pending:
            transport.writelines(self.pending)
            self.pending.clear()

    def flush(self) -> None:
        if self.outgoing.pending:
            self.transport.write(self.outgoing.read())

    def close_tls(self) -> None:
        with contextlib.suppress(ssl.SSLError):
            self.tls.unwrap()
        self.flush()
        self.transport.close()

    def eof_received(self) -> bool:
        if self.backend is not None:
            self.backend.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.backend is not None:
            self.backend.close()


class MinimalRelay:
    def __init__(self, config_path: str) -> None:
        config = load_config(config_path)
        chains = [(str(c.cert), str(c.key), None) for c in config.tls.certificates]
        self.context = build_context(config.tls.selection, chains)
        # Tickets under OpenSSL's own per-process key: returning clients (res-*, which offer
        # tickets only) resume all in C, the least a resumption can cost.
        self.context.options &= ~ssl.OP_NO_TICKET
        self.listen = config.listen
        if not isinstance(config.backend, TcpAddress):
            raise SystemExit("minimal_relay: TCP backends only")
        self.backend = config.backend

    def dial(self, client: Client) -> None:
        loop = asyncio.get_running_loop()
        client.dialing = loop.create_task(
            loop.create_connection(lambda: Backend(client), self.backend.host, self.backend.port)
        )

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Client(self), self.listen.host, self.listen.port, backlog=1024
        )
        async with server:
            await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True)
    relay = MinimalRelay(parser.parse_args().config)
    uvloop.run(relay.serve())


if __name__ == "__main__":
    main()
