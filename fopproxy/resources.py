"""Process resources the proxy looks after itself: the file-descriptor budget and the heap.

File descriptors: every connection holds two (client and backend). If `max_connections` needs
more than RLIMIT_NOFILE allows, accepts and backend dials start failing with EMFILE, and libuv
then sheds new clients silently (it accepts and closes them, so nothing is counted or logged).
So the worker raises its soft limit to the hard limit, and serves at most what the limit allows,
shedding the rest through the normal, counted `max_connections` path. The inbound listener and
every outbound listener each have `max_connections` of their own but share the one limit, so
where their bounds together do not fit it, each gets a share in proportion (`share_capacity`).

Heap: a burst of handshakes (each SSL object holds tens of KiB) leaves glibc's heap fragmented;
freed memory stays resident after the burst, so RSS ratchets up with every flood. Once a burst
is over, `malloc_trim(0)` (bound in native) hands the free pages back. It runs only after the
open-connection count fell to a quarter of its recent peak, so steady load never pays for it.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable

from fopproxy.native import malloc_trim

log = logging.getLogger("fopproxy.resources")

FDS_PER_CONNECTION = 2  # the client socket and the backend socket
# Listener, epoll, signal pipe, log, certificate reads, metrics listener and scrapes, and the
# descriptor an accept needs even to shed a connection.
RESERVED_FDS = 32
# Largest soft limit we ask for when the hard limit is unlimited (the kernel's default nr_open).
NOFILE_CEILING = 1 << 20

TRIM_SAMPLE_SECONDS = 0.5
TRIM_EVERY_SAMPLES = 10
TRIM_MIN_PEAK = 64


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # e.g. above fs.nr_open: keep what we have
            log.debug("cannot raise RLIMIT_NOFILE to %d: %s", target, exc)
        else:
            soft = target
    return NOFILE_CEILING if soft == resource.RLIM_INFINITY else soft


def share_capacity(bounds: list[int], nofile: int) -> list[int]:
    """How many connections each listener may hold when they share `nofile` descriptors: its
    own bound where all of them fit, otherwise a share in proportion to its bound (at least 1)."""
    budget = max(len(bounds), (nofile - RESERVED_FDS) // FDS_PER_CONNECTION)
    total = sum(bounds)
    if total <= budget:
        return list(bounds)
    return [max(1, bound * budget // total) for bound in bounds]


def trim_heap() -> None:
    """Hand free heap pages back to the kernel now (where glibc's malloc_trim exists)."""
    trim = malloc_trim()
    if trim is not None:
        trim()


async def release_memory_after_bursts(
    open_connections: Callable[[], int], stop: asyncio.Event
) -> None:
    """Until `stop` is set: after a burst of connections has ended, give free heap back."""
    trim = malloc_trim()
    if trim is None:
        return
    peak = 0
    samples = 0
    while not stop.is_set():
        await asyncio.sleep(TRIM_SAMPLE_SECONDS)  # cancelled at shutdown
        current = open_connections()
        peak = max(peak, current)
        samples += 1
        if samples >= TRIM_EVERY_SAMPLES:
            samples = 0
            if peak >= TRIM_MIN_PEAK and current * 4 <= peak:
                trim()
                log.debug("burst of %d connections over (%d open): heap trimmed", peak, current)
            peak = current
