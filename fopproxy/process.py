"""Process wiring, and the only place of it: one worker, N workers, or N workers + metrics.

`run(config)` is what `fopproxy -c FILE` does. With one worker everything runs in this process
(the metrics listener on the worker's own loop). With more, a supervisor forks them (each binds
the TLS port with SO_REUSEPORT, so the kernel spreads connections), forwards signals and
replaces a worker that dies; with metrics, the supervisor serves the sum of its workers'
snapshots. The supervisor, the worker and the metrics package know nothing of each other: they
are handed what they run here.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable

from fopproxy.app import WorkerHook, new_outbound, new_store, run_worker
from fopproxy.config import Config
from fopproxy.errors import ConfigError
from fopproxy.metrics.aggregate import snapshot_folder, snapshot_hook
from fopproxy.metrics.serve import SupervisorMetrics, serve_metrics
from fopproxy.sdnotify import notify
from fopproxy.stats import Stats
from fopproxy.tickets import FileKeyRing, KeyRing, TicketKeyError, ticket_keys
from fopproxy.workers import Supervisor

log = logging.getLogger("fopproxy")


def worker_hooks(config: Config) -> tuple[WorkerHook, ...]:
    """What a lone worker starts next to its listener: the metrics listener, where configured."""
    if config.metrics.listen is None:
        return ()
    return (serve_metrics,)


def ready() -> None:
    """The whole process serves (every worker): tell systemd, where it asks (`Type=notify`)."""
    notify("READY=1")


def make_ticket_keys(config: Config) -> KeyRing | None:
    """The session-ticket keys every worker shares: made here, before any fork, and only here.

    ConfigError naming the key for a key file that cannot be used (exit 2). None without an
    inbound listener (outbound only: a client keeps the sessions servers give it).
    """
    if config.tls is None:
        return None
    tickets = config.tls.session_tickets
    try:
        ring = ticket_keys(tickets.enabled, tickets.rotation, tickets.key_file)
    except (OSError, TicketKeyError) as exc:
        where = f"{tickets.key_file}: " if tickets.key_file is not None else ""
        raise ConfigError([f"tls.session_tickets.key_file: {where}{exc}"]) from None
    if isinstance(ring, FileKeyRing):
        log.info(
            "session ticket keys: %d key(s) from %s, the first encrypts", len(ring.keys),
            ring.path,
        )
    elif ring is not None:
        log.info(
            "session ticket keys: in memory, shared by the workers, rotated every %gs",
            tickets.rotation,
        )
    return ring


def run(config: Config) -> int:
    """Run the proxy as configured until a signal stops it; returns the exit code."""
    tickets = make_ticket_keys(config)
    # Validate certificates before forking anything, so a bad file is one clear error.
    new_store(config, Stats(), tickets)
    new_outbound(config, Stats())
    if config.workers == 1:
        return run_worker(config, ready=ready, hooks=worker_hooks(config), tickets=tickets)
    if config.metrics.listen is None:
        def child_main(index: int, ready: Callable[[], None]) -> int:
            del index
            return run_worker(config, reuse_port=True, ready=ready, tickets=tickets)

        return Supervisor(
            config.workers, child_main, on_ready=ready, on_tick=_tick(tickets)
        ).run()
    return run_with_metrics(config, tickets)


def _tick(tickets: KeyRing | None) -> Callable[[], None] | None:
    """The supervisor steps the key schedule too: a worker forked later must not start from a
    key the others have already forgotten (nor keep one alive in the supervisor's memory)."""
    return tickets.refresh if tickets is not None else None


def run_with_metrics(config: Config, tickets: KeyRing | None = None) -> int:
    """`workers: N` with metrics: each worker answers a snapshot socket; the supervisor sums."""
    address = config.metrics.listen
    assert address is not None
    folder = snapshot_folder()
    try:
        metrics = SupervisorMetrics(address, folder, config.workers)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        raise

    def child_main(index: int, ready: Callable[[], None]) -> int:
        del index
        metrics.close_in_child()
        return run_worker(
            config, reuse_port=True, ready=ready, hooks=(snapshot_hook(folder),), tickets=tickets
        )

    supervisor = Supervisor(config.workers, child_main, on_ready=ready, on_tick=_tick(tickets))
    supervisor.on_child_exit.append(metrics.aggregator.on_child_exit)
    try:
        metrics.start()
        return supervisor.run()
    finally:
        metrics.stop()
        shutil.rmtree(folder, ignore_errors=True)
