"""Process wiring: the event loop, the certificate store, the worker, and `workers: N`.

`run(config)` is what `fopproxy -c FILE` does. With one worker everything runs in this process;
with more, a supervisor forks them (each binds the port with SO_REUSEPORT, so the kernel spreads
connections), forwards signals, and replaces a worker that dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

import uvloop

from fopproxy.config import Config
from fopproxy.reload import CertificateStore
from fopproxy.server import Worker
from fopproxy.stats import Stats

log = logging.getLogger("fopproxy")

# Something a worker runs next to its listener: entered after the listener is bound, exited
# after the drain, so it outlives the TLS listener (the metrics listener answers 503 meanwhile).
WorkerHook = Callable[[Worker], contextlib.AbstractAsyncContextManager[None]]


def new_store(config: Config, stats: Stats) -> CertificateStore:
    """Load and validate the certificates; raises CertificateError (exit 2) when unusable."""
    return CertificateStore(
        config.tls.certificates,
        config.server_name,
        config.tls.selection,
        stats,
        grace=config.tls.reload_grace,
        client_auth=config.tls.client_auth,
    )


async def serve_worker(
    config: Config,
    *,
    reuse_port: bool = False,
    ready: Callable[[], None] | None = None,
    hooks: tuple[WorkerHook, ...] = (),
) -> int:
    """Run one worker on the current (uvloop) loop until a signal drains it."""
    loop = asyncio.get_running_loop()
    stats = Stats()
    store = new_store(config, stats)
    worker = Worker(config, store, stats, reuse_port=reuse_port)
    worker.install_signal_handlers(loop)
    try:
        async with contextlib.AsyncExitStack() as running:
            await worker.start()
            for hook in hooks:
                await running.enter_async_context(hook(worker))
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
        worker.remove_signal_handlers(loop)


def worker_hooks(config: Config) -> tuple[WorkerHook, ...]:
    """What each worker starts next to its listener (the metrics listener, where configured).

    With `workers: N` the supervisor serves metrics (see `run`), so workers get none here.
    """
    if config.metrics.listen is None or config.workers > 1:
        return ()
    from fopproxy.metrics import serve_metrics

    return (serve_metrics,)


def run_worker(
    config: Config,
    *,
    reuse_port: bool = False,
    ready: Callable[[], None] | None = None,
    hooks: tuple[WorkerHook, ...] | None = None,
) -> int:
    if hooks is None:
        hooks = worker_hooks(config)
    return uvloop.run(serve_worker(config, reuse_port=reuse_port, ready=ready, hooks=hooks))


def run(config: Config) -> int:
    # Validate certificates before forking anything, so a bad file is one clear error.
    new_store(config, Stats())
    if config.workers == 1:
        return run_worker(config)
    if config.metrics.listen is not None:
        from fopproxy.metrics import run_supervised

        return run_supervised(config)
    from fopproxy.workers import Supervisor

    return Supervisor(config).run()
