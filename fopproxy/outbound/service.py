"""The outbound listeners of one process: bind, accept, expire, reload, drain.

One `OutboundListener` per `outbound:` entry shares what its connections need (the store of the
current client context, counters, one read buffer, one sweep timer for every deadline).
`OutboundService` runs them all next to (or instead of) the inbound listener and drains them on
shutdown: stop accepting, let open connections finish for up to `timeouts.drain`, reset the rest.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence

from fopproxy.outbound.material import OutboundStore
from fopproxy.outbound.model import OutboundConfig
from fopproxy.outbound.pump import CLOSED, OPEN, OutboundConnection
from fopproxy.outbound.stats import OutboundStats
from fopproxy.reload import settle_delay
from fopproxy.stats import Stats

log = logging.getLogger("fopproxy.outbound")
conn_log = logging.getLogger("fopproxy.conn")

READ_BUFFER_SIZE = 256 * 1024


def bind_outbound(entry: OutboundConfig, *, reuse_port: bool, backlog: int) -> socket.socket:
    """Bind the plain listener ourselves, as the inbound one is (SO_REUSEPORT for workers)."""
    infos = socket.getaddrinfo(
        entry.listen.host, entry.listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class OutboundListener:
    """What every connection of one outbound shares."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        entry: OutboundConfig,
        store: OutboundStore,
        stats: OutboundStats,
        *,
        max_connections: int,
        log_connections: bool,
    ) -> None:
        self.loop = loop
        self.time = loop.time
        self.entry = entry
        self.store = store
        self.stats = stats
        self.max_connections = max_connections
        self.log_connections = log_connections
        self.buffer = memoryview(bytearray(READ_BUFFER_SIZE))
        self.active: set[OutboundConnection] = set()
        self.accepting = True
        self.server: asyncio.AbstractServer | None = None
        self._idle_waiters: list[asyncio.Future[None]] = []
        t = entry.timeouts
        self.sweep_interval = min(1.0, max(0.01, min(t.connect, t.handshake, t.idle) / 4))
        self._sweeper: asyncio.TimerHandle | None = None
        self._next_rejection_log = 0.0
        self.rejected = 0

    def full(self) -> bool:
        return len(self.active) >= self.max_connections

    def note_rejected(self, reason: str) -> None:
        self.rejected += 1
        now = self.time()
        if now >= self._next_rejection_log:
            self._next_rejection_log = now + 1.0
            log.warning(
                "outbound %s: rejecting new connections (%s): %d open, limit %d",
                self.entry.name, reason, len(self.active), self.max_connections,
            )

    def add(self, conn: OutboundConnection) -> None:
        self.active.add(conn)
        self.stats.active = len(self.active)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.sweep_interval, self._sweep)

    def discard(self, conn: OutboundConnection) -> bool:
        """Forget `conn`; False if it was already forgotten (so it is accounted once)."""
        if conn not in self.active:
            return False
        self.active.discard(conn)
        self.stats.active = len(self.active)
        if not self.active:
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()
        return True

    def _sweep(self) -> None:
        """Expire dials and handshakes, close idle relays; one timer for all connections."""
        self._sweeper = None
        now = self.time()
        idle = self.entry.timeouts.idle
        for conn in list(self.active):
            if conn.state == OPEN:
                moved = conn.to_server + conn.to_app
                if moved != conn.moved:
                    conn.moved = moved
                    conn.last = now
                elif now - conn.last >= idle:
                    conn.idle_timeout()
            elif conn.state != CLOSED and now >= conn.deadline:
                conn.expired()
        if self.active:
            self._sweeper = self.loop.call_later(self.sweep_interval, self._sweep)

    async def start(self, sock: socket.socket, backlog: int) -> None:
        self.server = await self.loop.create_server(
            lambda: OutboundConnection(self), sock=sock, backlog=backlog
        )

    def stop_accepting(self) -> None:
        self.accepting = False
        if self.server is not None:
            self.server.close()

    async def wait_idle(self) -> None:
        if self.active:
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._idle_waiters.append(waiter)
            await waiter

    def abort_all(self, reason: str) -> None:
        for conn in list(self.active):
            conn.abort(reason)

    def log_closed(self, conn: OutboundConnection, micros: int) -> None:
        if not conn_log.isEnabledFor(logging.INFO):
            return
        event = {
            "direction": "outbound",
            "outbound": self.entry.name,
            "client": conn.peer,
            "server": str(self.entry.connect),
            "sni": self.entry.server_name,
            "version": conn.version,
            "cipher": conn.cipher,
            "resumed": "yes" if conn.resumed else "no",
            "bytes_to_server": conn.to_server,
            "bytes_to_app": conn.to_app,
            "duration": f"{micros // 1_000_000}.{micros % 1_000_000:06d}",
            "reason": conn.reason,
        }
        conn_log.info("connection closed", extra={"event": event})


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
        self._watcher: asyncio.Task[None] | None = None
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

    async def start(self, *, reuse_port: bool = False) -> None:
        """Bind every listener (all or none: a port in use stops the start)."""
        loop = asyncio.get_running_loop()
        socks: list[socket.socket] = []
        try:
            for entry in self.entries:
                socks.append(bind_outbound(entry, reuse_port=reuse_port, backlog=self.backlog))
        except OSError:
            for sock in socks:
                sock.close()
            raise
        for entry, store, stats, sock in zip(self.entries, self.stores, self.stats, socks,
                                             strict=True):
            listener = OutboundListener(
                loop, entry, store, stats,
                max_connections=self.max_connections, log_connections=self.log_connections,
            )
            await listener.start(sock, self.backlog)
            self.listeners.append(listener)
            log.info(
                "outbound %s: listening on %s -> %s (TLS, server name %s, trust %s, profile %s%s)",
                entry.name, entry.listen, entry.connect, entry.server_name, entry.trust_label,
                entry.selection.profile.name,
                ", client certificate" if entry.client_certificate else "",
            )
        self._watcher = loop.create_task(self._watch(), name="outbound-watch")

    def reload(self) -> None:
        """SIGHUP: re-read every outbound's files now."""
        for store in self.stores:
            store.reload(force=True)

    async def _watch(self) -> None:
        settle = settle_delay(self.reload_interval)
        delay = self.reload_interval
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=delay)
            except TimeoutError:
                changing = [store.poll() for store in self.stores]
                delay = settle if any(changing) else self.reload_interval

    def stop_accepting(self) -> None:
        for listener in self.listeners:
            listener.stop_accepting()

    async def wait_idle(self) -> None:
        await asyncio.gather(*(listener.wait_idle() for listener in self.listeners))

    def abort_all(self, reason: str) -> None:
        for listener in self.listeners:
            listener.abort_all(reason)

    async def close(self) -> None:
        """After the drain: stop the watcher and wait for the listening sockets to close."""
        self._stop.set()
        self.stop_accepting()
        if self._watcher is not None:
            await asyncio.gather(self._watcher, return_exceptions=True)
        for listener in self.listeners:
            if listener.server is not None:
                await listener.server.wait_closed()
