"""`workers: N`: each worker answers a snapshot on a private Unix socket; the supervisor sums them.

The supervisor keeps each worker's last snapshot and, when a worker exits, folds those counts
into a retained base, so totals never go backwards when a worker is replaced. (Counts a crashed
worker made after the last scrape are lost: the totals stay monotonic, they only miss those.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

from fopproxy.metrics.snapshot import MetricsSnapshot, take_snapshot

if TYPE_CHECKING:
    from fopproxy.server import Worker

log = logging.getLogger("fopproxy.metrics")

# The supervisor's per-worker snapshot query; a worker busy longer than this keeps its last one.
WORKER_QUERY_TIMEOUT = 2.0
MAX_SNAPSHOT = 4 * 1024 * 1024
MAX_UNIX_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on BSDs

# ---- workers: N: snapshots over Unix sockets, summed by the supervisor ---------------------


class SnapshotProtocol(asyncio.Protocol):
    """Answers every connection with the worker's snapshot as JSON, then closes."""

    def __init__(self, worker: Worker, started: float) -> None:
        self.worker = worker
        self.started = started

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast("asyncio.Transport", transport)  # uvloop's class is not asyncio's
        stream.write(take_snapshot(self.worker, self.started).to_json())
        stream.close()


def snapshot_path(folder: Path, pid: int) -> Path:
    return folder / f"worker-{pid}.sock"


def snapshot_hook(folder: Path) -> Callable[[Worker], contextlib.AbstractAsyncContextManager[None]]:
    """Worker hook for `workers: N`: the snapshot socket the supervisor reads at scrape time."""

    @contextlib.asynccontextmanager
    async def hook(worker: Worker) -> AsyncIterator[None]:
        path = snapshot_path(folder, os.getpid())
        started = time.time()
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(lambda: SnapshotProtocol(worker, started), str(path))
        try:
            yield
        finally:
            server.close()
            await server.wait_closed()
            path.unlink(missing_ok=True)

    return hook


def query_worker(path: Path, timeout: float = WORKER_QUERY_TIMEOUT) -> MetricsSnapshot | None:
    """One worker's snapshot, or None when it does not answer (exiting, busy, not bound yet)."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            while chunk := sock.recv(65536):
                data += chunk
                if len(data) > MAX_SNAPSHOT or time.monotonic() > deadline:
                    return None
    except OSError:
        return None
    try:
        return MetricsSnapshot.from_json(bytes(data))
    except ValueError as exc:
        log.warning("worker snapshot %s unreadable: %s", path.name, exc)
        return None


class WorkerAggregator:
    """Sums the workers' snapshots; counts of workers that exited live on in `base`.

    `poll` runs on a scrape thread of the metrics listener, `on_child_exit` on the supervisor's
    main thread; the lock guards `last`, `base` and `exited`. Queries happen outside the lock,
    so a slow worker never holds up the supervisor reaping and replacing workers.
    """

    def __init__(self, folder: Path, workers: int) -> None:
        self.folder = folder
        self.workers = workers
        self.lock = threading.Lock()
        self.base = MetricsSnapshot()  # counters of workers that have exited; gauges stay at zero
        self.last: dict[int, MetricsSnapshot] = {}  # pid -> newest snapshot of a live worker
        self.exited: set[int] = set()  # folded since the last poll: late answers are ignored

    def on_child_exit(self, index: int, pid: int) -> None:
        del index
        with self.lock:
            snap = self.last.pop(pid, None)
            if snap is not None:
                self.base = self.base.add_counters(snap)
            self.exited.add(pid)
            # A crashed worker leaves its socket file; it must not be queried again.
            snapshot_path(self.folder, pid).unlink(missing_ok=True)

    def _worker_pids(self) -> list[int]:
        pids = []
        with contextlib.suppress(FileNotFoundError):
            for entry in self.folder.iterdir():
                stem = entry.name.removeprefix("worker-").removesuffix(".sock")
                if entry.name.startswith("worker-") and stem.isdigit():
                    pids.append(int(stem))
        return pids

    def poll(self) -> tuple[MetricsSnapshot, int]:
        """The summed snapshot, and how many workers answered ready."""
        folder = self.folder
        answers = {pid: query_worker(snapshot_path(folder, pid)) for pid in self._worker_pids()}
        ready = 0
        with self.lock:
            for pid, snap in answers.items():
                if snap is None or pid in self.exited:
                    continue
                self.last[pid] = snap
                ready += snap.ready
            # Any pid folded before this point had its file removed first: no later poll sees it.
            self.exited.clear()
            total = self.base
            for snap in self.last.values():
                total = total + snap
        return replace(total, ready=ready >= self.workers), ready

    def snapshot(self) -> MetricsSnapshot:
        return self.poll()[0]

    def ready(self) -> bool:
        return self.poll()[0].ready


def snapshot_folder() -> Path:
    """A private (0700) folder for the workers' sockets, short enough for AF_UNIX paths."""
    folder = Path(tempfile.mkdtemp(prefix="fopproxy-"))
    if len(str(snapshot_path(folder, 2**22))) > MAX_UNIX_PATH:  # a long TMPDIR
        folder.rmdir()
        folder = Path(tempfile.mkdtemp(prefix="fopproxy-", dir="/tmp"))  # mkdtemp: mode 0700
    return folder
