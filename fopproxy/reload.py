"""Certificate hot reload: watch file content, validate a whole new set, publish it atomically.

Content, not mtimes or inotify: a Kubernetes Secret volume swaps a `..data` symlink, which an
inotify watch on the file itself never sees, while reading the bytes always gives what a new
connection would get. A new set is built completely (parsed, validated, contexts made) from one
read of the files before the single reference swap; new handshakes take `store.current.context`,
connections already open keep the SSLObject (and so the context) they started with.

Rotations are rarely atomic: cert-manager and operators write the certificate, then the key, and a
large file may be caught half-written. So the watcher
- only looks at content that has stayed the same across two reads `settle` seconds apart, and
- treats a key that does not match its certificate, a file cut short and a file that is missing as
  "maybe still being written": such content is retried on every check and only counted as a
  failed reload once it has stayed that way for `grace` seconds.
Every distinct bad content is counted and logged once; the previous set keeps serving meanwhile,
and the next good content is picked up. SIGHUP (`reload(force=True)`) is an explicit request:
no settle, no grace, and its outcome is always counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from fopproxy.certs import CertificateSet, Snapshot, build_certificate_set, read_snapshot
from fopproxy.clientauth import ClientAuthConfig, ca_to_read
from fopproxy.errors import (
    CertificateError,
    CertificateParseError,
    CertificateReadError,
    ComplianceError,
    KeyMismatchError,
)
from fopproxy.policy import SuiteSelection
from fopproxy.sources import CertificateSource
from fopproxy.stats import Stats
from fopproxy.tickets import FileKeyRing, KeyRing, TicketKeyError

log = logging.getLogger("fopproxy.reload")

# What a rotation that is still under way looks like; anything else is final for that content.
MAYBE_IN_PROGRESS = (KeyMismatchError, CertificateParseError, CertificateReadError)

DEFAULT_GRACE = 10.0
MAX_SETTLE = 0.5


def settle_delay(interval: float) -> float:
    """How long content must stay unchanged before it is loaded: short, so a rotation is quick."""
    return min(MAX_SETTLE, interval / 10)


class Content(Protocol):
    """Files read at one moment: what a store builds from, named by a digest of the bytes."""

    @property
    def digest(self) -> str: ...


class Built(Protocol):
    """What a store publishes: built from one Content, remembering its digest."""

    @property
    def digest(self) -> str: ...


C = TypeVar("C", bound=Content)
B = TypeVar("B", bound=Built)


class ContentStore(Generic[C, B]):
    """Holds the current build of some files; replaces it only with a fully valid new one.

    The watching rules of this module (settle, grace for a rotation under way, each bad content
    counted and logged once, SIGHUP without either) are the same for every kind of files; a
    subclass says how to read them (`read`, CertificateReadError when it cannot), how to build
    them (`build`, CertificateError or ComplianceError when they are not usable) and how to
    word its log lines.
    """

    # How the log lines name what is reloaded (subclasses reword them).
    failure_text = "certificate reload failed, still serving the previous certificates"
    pending_text = "certificate files not usable yet"

    def __init__(
        self,
        stats: Stats,
        *,
        grace: float = DEFAULT_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stats = stats
        self.grace = grace
        self._clock = clock
        # Raises at start: there is no old build to fall back on.
        self.current: B = self.build(self.read())
        # The first load is a successful load too (as Prometheus' own config reload gauge counts).
        stats.last_reload_success = time.time()
        self._seen = self.current.digest  # content of the previous look (settle check)
        self._failed: str | None = None  # content already counted as a failure
        self._pending: str | None = None  # content in its grace period ...
        self._pending_since = 0.0  # ... since this clock() time

    def read(self) -> C:
        raise NotImplementedError

    def build(self, content: C) -> B:
        raise NotImplementedError

    def published(self, new: B) -> None:
        """Log (or otherwise announce) a newly published build."""

    def before_check(self) -> None:
        """Anything to look at on every check besides the content (session-ticket keys)."""

    def get(self) -> B:
        return self.current

    def poll(self) -> bool:
        """One check of the watcher; True when the files are changing and want a quick re-check."""
        self.before_check()
        key, content, error = self._read()
        if key in (self.current.digest, self._failed):
            self._seen = key
            return False
        if key != self._seen:
            # Changed since the last look: it may still be being written. Look again shortly.
            self._seen = key
            return True
        self._consider(key, content, error, force=False)
        return False

    def reload(self, *, force: bool = False) -> bool:
        """Read the files now and use them if valid; True if a new build is now current.

        `force` (SIGHUP) rebuilds even unchanged content and reports a failure at once.
        """
        self.before_check()
        key, content, error = self._read()
        if not force and key in (self.current.digest, self._failed):
            return False
        self._seen = key
        return self._consider(key, content, error, force=force)

    def reload_on_request(self) -> None:
        """SIGHUP: `reload(force=True)`, which must not raise into the signal handler (the
        loop's report of it would be all there is, and asyncio's logger is quiet here). A
        failure nobody foresaw is counted and logged as the watcher's are; what serves stays."""
        try:
            self.reload(force=True)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            self.fail_transient(f"{type(exc).__name__}: {exc}")

    def _read(self) -> tuple[str, C | None, CertificateError | None]:
        """The content key of the files now: their digest, or what stops them being read.

        Reading never blocks: a FIFO, a device, a directory or an oversized file is refused
        before it is read (sources.read_pem_file).
        """
        try:
            content = self.read()
        except CertificateReadError as exc:
            return f"unreadable: {exc}", None, exc
        return content.digest, content, None

    def _consider(
        self, key: str, content: C | None, error: CertificateError | None, *, force: bool
    ) -> bool:
        reason: CertificateError | ComplianceError
        if content is not None:
            try:
                new = self.build(content)
            except (CertificateError, ComplianceError) as exc:
                reason = exc
            except OSError as exc:
                # Building contexts needs descriptors (memfd): EMFILE says nothing about the
                # content, so it is counted but not remembered, and the next check tries again.
                self.fail_transient(f"cannot build the contexts: {exc}")
                return False
            else:
                self._publish(new)
                return True
        else:
            assert error is not None
            reason = error
        if not force and isinstance(reason, MAYBE_IN_PROGRESS) and self._in_grace(key, reason):
            return False
        self._fail(key, reason)
        return False

    def _in_grace(self, key: str, reason: CertificateError) -> bool:
        now = self._clock()
        if key != self._pending:
            self._pending, self._pending_since = key, now
            log.info(
                "%s, retrying for up to %gs before counting a failed reload (a rotation may "
                "still be writing them): %s",
                self.pending_text,
                self.grace,
                reason,
            )
        return now - self._pending_since < self.grace

    def fail_transient(self, reason: object) -> None:
        """Count and log a failure that is not the content's fault; it is retried next check."""
        self._pending = None
        self.stats.reloads["failure"] += 1
        log.error("%s; retrying at the next check: %s", self.failure_text, reason)

    def _fail(self, key: str, reason: Exception) -> None:
        self._pending = None
        self._failed = key
        self.stats.reloads["failure"] += 1
        log.error("%s: %s", self.failure_text, reason)

    def _publish(self, new: B) -> None:
        self.current = new
        self._seen = new.digest
        self._failed = None
        self._pending = None
        self.stats.reloads["success"] += 1
        self.stats.last_reload_success = time.time()
        self.published(new)


class CertificateStore(ContentStore[Snapshot, CertificateSet]):
    """The served certificates: a CertificateSet, rebuilt from `tls.certificates`."""

    def __init__(
        self,
        sources: Sequence[CertificateSource],
        server_name: str,
        selection: SuiteSelection,
        stats: Stats,
        *,
        grace: float = DEFAULT_GRACE,
        clock: Callable[[], float] = time.monotonic,
        tickets: KeyRing | None = None,
        client_auth: ClientAuthConfig | None = None,
    ) -> None:
        self.sources = tuple(sources)
        self.tickets = tickets
        self._ticket_failure: str | None = None
        # The client CA file is read, validated and swapped with the certificates: one snapshot.
        self.client_auth = client_auth
        self._client_ca = None if client_auth is None else ca_to_read(client_auth)
        self.server_name = server_name
        self.selection = selection
        super().__init__(stats, grace=grace, clock=clock)

    def read(self) -> Snapshot:
        return read_snapshot(self.sources, self._client_ca)

    def build(self, content: Snapshot) -> CertificateSet:
        return build_certificate_set(
            content, self.server_name, self.selection, tickets=self.tickets,
            client_auth=self.client_auth,
        )

    def published(self, new: CertificateSet) -> None:
        log.info(
            "certificates reloaded: %s",
            ", ".join(f"{c.label} serial={c.serial_hex} {c.key_type}" for c in new.certificates),
        )

    def before_check(self) -> None:
        self.reload_ticket_keys()
        self.current.sync_tickets()

    def reload_ticket_keys(self) -> None:
        """Re-read a session-ticket key file (tls.session_tickets.key_file) if it changed.

        The keys live in one ring that every context of every set shares, so new keys apply to
        the next handshake with no new context. A file that cannot be used keeps the keys in
        force: logged once per distinct problem and counted each time it is seen anew.
        """
        ring = self.tickets
        if not isinstance(ring, FileKeyRing):
            return
        problem: str | None = None
        try:
            changed = ring.reload()
        except (OSError, TicketKeyError) as exc:
            problem, changed = str(exc), False
        if problem is not None:
            if problem != self._ticket_failure:
                self.stats.ticket_key_reload_failures += 1
                log.error(
                    "session ticket key file %s cannot be used, keeping the keys in force: %s",
                    ring.path, problem,
                )
            self._ticket_failure = problem
            return
        self._ticket_failure = None
        if changed:
            log.info(
                "session ticket keys reloaded from %s: %d key(s), the first encrypts",
                ring.path, len(ring.keys),
            )


async def watch(store: ContentStore[Any, Any], interval: float, stop: asyncio.Event) -> None:
    """Poll the files every `interval` seconds (sooner while they change) until `stop` is set.

    The watcher must outlive any one bad check: a task that ended on an exception would stop all
    later rotations silently (asyncio's logger is quiet here) and let certificates expire. So a
    check that fails in a way nobody foresaw is logged, counted as a failed reload and tried
    again at the next interval, with the previous certificates still serving.
    """
    settle = settle_delay(interval)
    delay = interval
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
        except TimeoutError:
            delay = interval
            try:
                delay = settle if store.poll() else interval
            except Exception as exc:  # noqa: BLE001 - the watcher must not die (see docstring)
                store.fail_transient(f"{type(exc).__name__}: {exc}")
