"""The outbound listeners of one process: bind, reload, drain.

One `pump.OutboundListener` per `outbound:` entry; `OutboundService` runs them all next to (or
instead of) the inbound listener and drains them on shutdown: stop accepting, let open
connections finish for up to `timeouts.drain`, reset the rest.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence

from fopproxy.config import OutboundConfig
from fopproxy.listen import bind_tcp
from fopproxy.outbound.material import OutboundStore
from fopproxy.outbound.pump import OutboundCloseReason, OutboundListener
from fopproxy.outbound.stats import OutboundStats
from fopproxy.reload import watch
from fopproxy.stats import Stats

log = logging.getLogger("fopproxy.outbound")


def bind_outbound(entry: OutboundConfig, *, reuse_port: bool, backlog: int) -> socket.socket:
    """Bind the plain listener ourselves, as the inbound one is (SO_REUSEPORT for workers)."""
    try:
        return bind_tcp(entry.listen, reuse_port=reuse_port, backlog=backlog)
    except OSError as exc:
        # The CLI names `filename` as what could not be bound.
        raise OSError(exc.errno, exc.strerror, f"{entry.key}.listen {entry.listen}") from exc


class OutboundService:
    """Every outbound of one process: their stores, listeners, reload watcher and drain."""

    def __init__(
        self,
        entries: Sequence[OutboundConfig],
        stats: Stats,
        *,
        max_connections: int,
        log_connections: bool,
        reload_interval: float = 5.0,
        reload_grace: float = 10.0,
        backlog: int = 1024,
    ) -> None:
        self.entries = tuple(entries)
        self.reload_interval = reload_interval
        self.backlog = backlog
        self.max_connections = max_connections
        self.log_connections = log_connections
        # Validates trust and client certificates: CertificateError at start (exit 2).
        self.stores = [OutboundStore(e, stats, grace=reload_grace) for e in self.entries]
        self.stats = [OutboundStats(e.name) for e in self.entries]
        self.listeners: list[OutboundListener] = []
        self._watchers: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    @property
    def active(self) -> int:
        return sum(len(listener.active) for listener in self.listeners)

    @property
    def ready(self) -> bool:
        return bool(self.listeners) and all(
            listener.server is not None and listener.server.is_serving()
            for listener in self.listeners
        )

    async def start(
        self, *, reuse_port: bool = False, capacities: Sequence[int] | None = None
    ) -> None:
        """Bind every listener (all or none: a port in use stops the start). `capacities`: the
        bound of each listener's connections where the descriptor limit cuts `max_connections`
        (resources.share_capacity)."""
        loop = asyncio.get_running_loop()
        socks: list[socket.socket] = []
        try:
            for entry in self.entries:
                socks.append(bind_outbound(entry, reuse_port=reuse_port, backlog=self.backlog))
        except OSError:
            for sock in socks:
                sock.close()
            raise
        bounds = list(capacities) if capacities else [self.max_connections] * len(self.entries)
        for entry, store, stats, sock, bound in zip(
            self.entries, self.stores, self.stats, socks, bounds, strict=True
        ):
            listener = OutboundListener(
                loop, entry, store, stats,
                max_connections=bound, log_connections=self.log_connections,
            )
            listener.server = await loop.create_server(
                listener.protocol_factory, sock=sock, backlog=self.backlog
            )
            self.listeners.append(listener)
            log.info(
                "outbound %s: listening on %s -> %s (TLS, server name %s, trust %s, profile %s%s)",
                entry.name, entry.listen, entry.connect, entry.server_name, entry.trust_label,
                entry.selection.profile.name,
                ", client certificate" if entry.client_certificate else "",
            )
        # The served certificates' watcher (reload.watch), one per outbound's files.
        self._watchers = [
            loop.create_task(watch(store, self.reload_interval, self._stop),
                             name=f"outbound-watch-{entry.name}")
            for entry, store in zip(self.entries, self.stores, strict=True)
        ]

    def reload(self) -> None:
        """SIGHUP: re-read every outbound's files now."""
        for store in self.stores:
            store.reload_on_request()

    def stop_accepting(self) -> None:
        for listener in self.listeners:
            listener.stop_accepting()

    async def wait_idle(self) -> None:
        await asyncio.gather(*(listener.wait_idle() for listener in self.listeners))

    def abort_all(self) -> None:
        """The drain ran out: reset what is still open."""
        for listener in self.listeners:
            listener.abort_all(OutboundCloseReason.DRAIN_TIMEOUT)

    async def close(self) -> None:
        """After the drain: stop the watcher and wait for the listening sockets to close."""
        self._stop.set()
        self.stop_accepting()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        for listener in self.listeners:
            if listener.server is not None:
                await listener.server.wait_closed()
