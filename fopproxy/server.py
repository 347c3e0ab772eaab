"""One worker process: the TLS listener, its lifecycle, and the ordered graceful shutdown.

Shutdown order (SIGTERM/SIGINT, or `request_shutdown()`): stop accepting (the listening
socket closes, so new clients are refused and readiness turns false), let open connections finish
for up to `timeouts.drain` seconds, reset whatever is left, stop the watchers, exit 0. A second
signal skips the wait.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from typing import TYPE_CHECKING

from fopproxy.config import Config
from fopproxy.http.stats import HttpStats
from fopproxy.listen import bind_tcp
from fopproxy.relay import Relay
from fopproxy.reload import CertificateStore, watch
from fopproxy.resources import (
    raise_nofile_limit,
    release_memory_after_bursts,
    share_capacity,
)
from fopproxy.stats import Stats

if TYPE_CHECKING:
    from fopproxy.outbound.service import OutboundService

log = logging.getLogger("fopproxy.server")

EXIT_OK = 0
EXIT_FORCED = 1


def bind_listener(config: Config, *, reuse_port: bool) -> socket.socket:
    """Bind the TLS port ourselves so SO_REUSEPORT and IPv6-only are explicit, not defaults."""
    assert config.listen is not None  # only called where the inbound listener is configured
    return bind_tcp(config.listen, reuse_port=reuse_port, backlog=config.backlog)


class Worker:
    """Serves one listener until shut down; the unit that `workers: N` runs N of."""

    def __init__(
        self,
        config: Config,
        store: CertificateStore | None,
        stats: Stats,
        *,
        reuse_port: bool = False,
        sock: socket.socket | None = None,
        outbound: OutboundService | None = None,
    ) -> None:
        self.config = config
        # None for an outbound-only config (no TLS listener, no served certificates).
        self.store = store
        self.outbound = outbound
        self.stats = stats
        self.reuse_port = reuse_port
        self._sock = sock
        self.relay: Relay | None = None
        # mode: http's per-request counters (read by metrics.snapshot like `stats`).
        self.http_stats = HttpStats()
        self.server: asyncio.AbstractServer | None = None
        self.draining = False
        self._stop = asyncio.Event()
        self._force = asyncio.Event()

    @property
    def ready(self) -> bool:
        """Bound, serving valid certificates, not draining (what /readyz reports)."""
        if self.draining:
            return False
        inbound = self.store is None or (self.server is not None and self.server.is_serving())
        return inbound and (self.outbound is None or self.outbound.ready)

    def request_shutdown(self) -> None:
        """First call: drain. Second call: stop waiting for connections."""
        if self._stop.is_set():
            self._force.set()
        self._stop.set()

    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def remove_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            open_now = len(self.relay.active) if self.relay else 0
            open_now += self.outbound.active if self.outbound else 0
            log.warning("%s again: closing %d connections now", sig.name, open_now)
        else:
            log.info("%s: draining (up to %.0fs)", sig.name, self.config.timeouts.drain)
        self.request_shutdown()

    def _on_hup(self) -> None:
        log.info("SIGHUP: reloading certificates")
        if self.store is not None:
            self.store.reload_on_request()
        if self.outbound is not None:
            self.outbound.reload()

    async def start(self) -> None:
        # One descriptor budget for the inbound listener and every outbound one.
        nofile = raise_nofile_limit()
        bounds = [self.config.max_connections] * (
            (self.store is not None) + (len(self.outbound.entries) if self.outbound else 0)
        )
        capacities = share_capacity(bounds, nofile)
        if self.store is not None:
            await self._start_inbound(nofile, capacities.pop(0))
        if self.outbound is not None:
            await self.outbound.start(reuse_port=self.reuse_port, capacities=capacities)
            if capacities and capacities[0] < self.config.max_connections:
                log.warning(
                    "the open-file limit (ulimit -n) is %d, shared by the inbound listener and "
                    "%d outbound one(s): each outbound serves at most %d connections at once",
                    nofile, len(capacities), capacities[0],
                )

    async def _start_inbound(self, nofile: int, capacity: int) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        assert config.backend is not None
        if capacity < config.max_connections and not config.max_connections_set:
            log.info(
                "open-file limit (ulimit -n) is %d: serving at most %d connections at once "
                "(max_connections is not set; set it to be warned when the limit cuts it short)",
                nofile, capacity,
            )
        elif capacity < config.max_connections:
            log.warning(
                "max_connections is %d but the open-file limit (ulimit -n) is %d: serving at most "
                "%d connections at once (each needs 2 descriptors); raise the limit to serve more",
                config.max_connections, nofile, capacity,
            )
        assert self.store is not None
        assert config.tls is not None  # a store exists only for an inbound listener
        if config.mode == "http":
            from fopproxy.http.connection import HttpRelay

            self.relay = HttpRelay(
                loop, self.store.get, config.backend, config.timeouts, capacity, self.stats,
                config.logging.connections, config.http, self.http_stats,
                proxy_protocol=config.proxy_protocol,
                client_auth=config.tls.client_auth.enabled,
            )
        else:
            self.relay = Relay(
                loop,
                self.store.get,
                config.backend,
                config.timeouts,
                capacity,
                self.stats,
                config.logging.connections,
                proxy_protocol=config.proxy_protocol,
                client_auth=config.tls.client_auth.enabled,
            )
        sock = self._sock or bind_listener(config, reuse_port=self.reuse_port)
        self.server = await loop.create_server(
            self.relay.protocol_factory, sock=sock, backlog=config.backlog
        )

    async def serve(self) -> int:
        """Run until shutdown is requested, then drain; returns the exit code."""
        if self.server is None and (self.outbound is None or not self.outbound.listeners):
            await self.start()
        tasks = []
        relay = self.relay
        if self.store is not None and self.config.tls is not None:
            tasks.append(asyncio.create_task(
                watch(self.store, self.config.tls.reload_interval, self._stop), name="cert-watch"
            ))
        if relay is not None:
            tasks.append(asyncio.create_task(
                release_memory_after_bursts(lambda: len(relay.active), self._stop),
                name="heap-trim",
            ))
        try:
            await self._stop.wait()
        finally:
            code = await self._drain()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return code

    async def _wait_idle(self) -> None:
        if self.relay is not None:
            await self.relay.wait_idle()
        if self.outbound is not None:
            await self.outbound.wait_idle()

    async def _drain(self) -> int:
        relay = self.relay
        outbound = self.outbound
        self.draining = True
        if relay is not None and self.server is not None:
            relay.accepting = False
            self.server.close()
        if outbound is not None:
            outbound.stop_accepting()
        open_count = (len(relay.active) if relay else 0) + (outbound.active if outbound else 0)
        if open_count:
            log.info("draining %d open connections", open_count)
        idle = asyncio.ensure_future(self._wait_idle())
        force = asyncio.ensure_future(self._force.wait())
        done, _ = await asyncio.wait(
            {idle, force},
            timeout=self.config.timeouts.drain,
            return_when=asyncio.FIRST_COMPLETED,
        )
        idle.cancel()
        force.cancel()
        code = EXIT_OK
        left = (len(relay.active) if relay else 0) + (outbound.active if outbound else 0)
        if left:
            log.warning("drain ended with %d connections open: closing them", left)
            if relay is not None:
                relay.abort_all("drain_timeout")
            if outbound is not None:
                outbound.abort_all()
            code = EXIT_FORCED if force in done else EXIT_OK
        if self.server is not None:
            await self.server.wait_closed()
        if outbound is not None:
            await outbound.close()
        return code
