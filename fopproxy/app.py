"""One worker's event loop: the certificate store, the TLS listener and what runs next to it.

`serve_worker` is the whole life of one proxy process (or of one of N forked workers). How
processes are put together (one worker, N workers, N workers + metrics) is `fopproxy.process`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import uvloop

from fopproxy import signals
from fopproxy.config import Config
from fopproxy.reload import CertificateStore
from fopproxy.server import Worker
from fopproxy.stats import Stats
from fopproxy.tickets import KeyRing

if TYPE_CHECKING:
    from fopproxy.outbound.service import OutboundService

log = logging.getLogger("fopproxy")

# Something a worker runs next to its listener: entered after the listener is bound, exited
# after the drain, so it outlives the TLS listener (the metrics listener answers 503 meanwhile).
WorkerHook = Callable[[Worker], contextlib.AbstractAsyncContextManager[None]]


def new_store(
    config: Config, stats: Stats, tickets: KeyRing | None = None
) -> CertificateStore | None:
    """Load and validate the certificates; raises CertificateError (exit 2) when unusable.

    None where the config has no inbound listener (outbound only)."""
    if config.tls is None or config.server_name is None:
        return None
    return CertificateStore(
        config.tls.certificates,
        config.server_name,
        config.tls.selection,
        stats,
        grace=config.tls.reload_grace,
        tickets=tickets,
        client_auth=config.tls.client_auth,
    )


def new_outbound(config: Config, stats: Stats) -> OutboundService | None:
    """The outbound listeners' service, trust and client certificates validated (exit 2 if not).

    Reload timing follows `tls.reload_interval`/`reload_grace` where the inbound side has them.
    """
    if not config.outbound:
        return None
    from fopproxy.outbound.service import OutboundService

    tls = config.tls
    return OutboundService(
        config.outbound,
        stats,
        max_connections=config.max_connections,
        log_connections=config.logging.connections,
        reload_interval=tls.reload_interval if tls else 5.0,
        reload_grace=tls.reload_grace if tls else 10.0,
        backlog=config.backlog,
    )


async def serve_worker(
    config: Config,
    *,
    reuse_port: bool = False,
    ready: Callable[[], None] | None = None,
    hooks: tuple[WorkerHook, ...] = (),
    tickets: KeyRing | None = None,
) -> int:
    """Run one worker on the current (uvloop) loop until a signal drains it.

    `tickets`: the session-ticket keys, made by whoever forked this worker so that every
    worker opens every other's tickets (fopproxy.tickets).

    The process signals are blocked from process start (`fopproxy.signals`); they are lifted
    here once the loop handles them, so a SIGHUP or SIGTERM sent before that is handled now: a
    SIGTERM that came early drains a worker that has just started, with exit 0.
    """
    loop = asyncio.get_running_loop()
    stats = Stats()
    store = new_store(config, stats, tickets)
    outbound = new_outbound(config, stats)
    worker = Worker(config, store, stats, reuse_port=reuse_port, outbound=outbound)
    previous = signals.block()  # a caller other than the CLI (a test) gets the same guarantee
    worker.install_signal_handlers(loop)
    signals.unblock()
    try:
        async with contextlib.AsyncExitStack() as running:
            await worker.start()
            for hook in hooks:
                await running.enter_async_context(hook(worker))
            if store is not None and config.tls is not None:
                certs = ", ".join(
                    f"{c.label} ({c.key_description}, expires {c.not_after:%Y-%m-%d})"
                    for c in store.current.certificates
                )
                log.info(
                    "listening on %s -> %s, profile %s, pid %d, certificates: %s",
                    config.listen, config.backend, config.tls.profile_name, os.getpid(), certs,
                )
            if ready is not None:
                ready()
            return await worker.serve()
    finally:
        # Blocked again before the handlers go: a late signal must not kill a process that
        # has drained and is returning its exit code.
        signals.block()
        worker.remove_signal_handlers(loop)
        signals.restore(previous)


def run_worker(
    config: Config,
    *,
    reuse_port: bool = False,
    ready: Callable[[], None] | None = None,
    hooks: tuple[WorkerHook, ...] = (),
    tickets: KeyRing | None = None,
) -> int:
    """`serve_worker` on a fresh uvloop loop: the body of a worker process."""
    return uvloop.run(
        serve_worker(config, reuse_port=reuse_port, ready=ready, hooks=hooks, tickets=tickets)
    )
