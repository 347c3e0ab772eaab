"""Where the metrics listener runs: on a worker's own loop, or on the supervisor's metrics thread.

- one worker: `serve_metrics` is a worker hook; the listener shares the proxy's event loop.
- `workers: N`: only the supervisor binds `metrics.listen`. Its main thread sits in
  `sigtimedwait`, so the listener gets a thread with an event loop of its own; answers that
  query the workers run on a small thread pool, and /healthz never waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from fopproxy.metrics.aggregate import WorkerAggregator
from fopproxy.metrics.collector import make_registry
from fopproxy.metrics.http import MetricsListener
from fopproxy.metrics.snapshot import take_snapshot
from fopproxy.signals import PROCESS_SIGNALS

if TYPE_CHECKING:
    from fopproxy.config import TcpAddress
    from fopproxy.server import Worker

log = logging.getLogger("fopproxy.metrics")

# Threads that compute the supervisor's /metrics and /readyz (each asks every worker).
SCRAPE_THREADS = 2


@contextlib.asynccontextmanager
async def serve_metrics(worker: Worker) -> AsyncIterator[None]:
    """Worker hook: /metrics, /healthz, /readyz on `metrics.listen`, until the worker exits.

    It stays up through the drain (readiness says 503 from the first signal) and closes only
    after the worker has finished, so a probe never sees a refused connection while draining.
    """
    address = worker.config.metrics.listen
    assert address is not None
    started = time.time()
    registry = make_registry(lambda: take_snapshot(worker, started))
    listener = await MetricsListener.start(address, registry, lambda: worker.ready)
    log.info("metrics on http://%s/metrics", address)
    try:
        yield
    finally:
        await listener.close()


class SupervisorMetrics:
    """The supervisor's listener: the sum of its workers' snapshots, served from its own thread.

    Bound in the constructor, so a taken port is an error before any worker starts.
    """

    def __init__(self, address: TcpAddress, folder: Path, workers: int) -> None:
        self.address = address
        self.aggregator = WorkerAggregator(folder, workers)
        self.executor = ThreadPoolExecutor(SCRAPE_THREADS, thread_name_prefix="metrics-scrape")
        self.loop = asyncio.new_event_loop()
        registry = make_registry(self.aggregator.snapshot)
        try:
            self.listener = self.loop.run_until_complete(
                MetricsListener.start(address, registry, self.aggregator.ready,
                                      offload=self.executor)
            )
        except OSError:
            self.loop.close()
            self.executor.shutdown()
            raise
        self.thread = threading.Thread(target=self.loop.run_forever, name="metrics-http",
                                       daemon=True)

    def start(self) -> None:
        # Signals, SIGCHLD included, are for the supervisor's sigtimedwait: a thread that left
        # SIGCHLD open could take it, and the supervisor would see a worker die late.
        blocked = {*PROCESS_SIGNALS, signal.SIGCHLD}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            self.thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        log.info("metrics on http://%s/metrics (sum of %d workers)",
                 self.address, self.aggregator.workers)

    def close_in_child(self) -> None:
        """In a freshly forked worker: drop the copies of the listener's sockets.

        Only the supervisor may accept on the port, and a client's socket must close when the
        supervisor closes it, not when the last worker holding a copy exits.
        """
        for fd in self.listener.fds():
            with contextlib.suppress(OSError):
                os.close(fd)

    def stop(self) -> None:
        if self.thread.is_alive():
            closing = asyncio.run_coroutine_threadsafe(self.listener.close(), self.loop)
            with contextlib.suppress(TimeoutError):  # the exit code matters more than a tidy close
                closing.result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            if self.thread.is_alive():
                return  # a daemon thread: it ends with the process; closing its loop would raise
        else:
            self.loop.run_until_complete(self.listener.close())
        self.loop.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
