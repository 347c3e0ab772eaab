"""Certificate hot reload: watch file content, validate a whole new set, publish it atomically.

Content, not mtimes or inotify: a Kubernetes Secret volume swaps a `..data` symlink, which an
inotify watch on the file itself never sees, while reading the bytes always gives what a new
connection would get. A new set is built completely (parsed, validated, contexts made) before the
single reference swap; new handshakes take `store.current.context`, connections already open keep
the SSLObject (and so the context) they started with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from fopproxy.certs import CertificateSet, CertificateSource, load_certificate_set, source_digest
from fopproxy.errors import CertificateError
from fopproxy.policy import SuiteSelection
from fopproxy.stats import Stats

log = logging.getLogger("fopproxy.reload")


class CertificateStore:
    """Holds the current CertificateSet; `reload()` replaces it only with a fully valid one."""

    def __init__(
        self,
        sources: Sequence[CertificateSource],
        server_name: str,
        selection: SuiteSelection,
        stats: Stats,
        *,
        pair_grace: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sources = tuple(sources)
        self.server_name = server_name
        self.selection = selection
        self.stats = stats
        self.pair_grace = pair_grace
        self._clock = clock
        # Raises CertificateError at start: there is no old set to fall back on.
        self.current: CertificateSet = load_certificate_set(self.sources, server_name, selection)
        self._failed_digest: str | None = None
        self._mismatch_since: float | None = None
        self.listeners: list[Callable[[CertificateSet], None]] = []

    def get(self) -> CertificateSet:
        return self.current

    def changed(self) -> bool:
        """Whether the files now differ from both the served set and the last failed attempt."""
        try:
            digest = source_digest(self.sources)
        except OSError:
            return True  # a file vanished mid-rotation: let reload() report it properly
        return digest not in (self.current.digest, self._failed_digest)

    def reload(self, *, force: bool = False) -> bool:
        """Try to load the files; True if a new set is now served."""
        if not force and not self.changed():
            return False
        try:
            new = load_certificate_set(self.sources, self.server_name, self.selection)
        except CertificateError as exc:
            return self._failed(str(exc))
        if new.digest == self.current.digest and not force:
            return False
        self.current = new
        self._failed_digest = None
        self._mismatch_since = None
        self.stats.reloads["success"] += 1
        self.stats.last_reload_success = time.time()
        log.info(
            "certificates reloaded: %s",
            ", ".join(f"{c.label} serial={c.serial_hex} {c.key_type}" for c in new.certificates),
        )
        for listener in self.listeners:
            listener(new)
        return True

    def _failed(self, reason: str) -> bool:
        try:
            digest = source_digest(self.sources)
        except OSError:
            digest = None
        if "does not match" in reason:
            # Cert and key are often written in two steps: give the second file time to land
            # before calling the pair broken, so a rotation does not raise a failure alert.
            now = self._clock()
            if self._mismatch_since is None:
                self._mismatch_since = now
            if now - self._mismatch_since < self.pair_grace:
                log.info("certificate and key do not match yet, waiting for the pair: %s", reason)
                return False
        self._mismatch_since = None
        self._failed_digest = digest
        self.stats.reloads["failure"] += 1
        log.error("certificate reload failed, still serving the previous set: %s", reason)
        return False


async def watch(store: CertificateStore, interval: float, stop: asyncio.Event) -> None:
    """Poll the files every `interval` seconds until `stop` is set."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            store.reload()
