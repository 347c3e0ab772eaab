"""`workers: N`: a small supervisor that forks N workers and keeps N running.

Each worker binds the TLS port with SO_REUSEPORT, so the kernel balances new connections and a
dying worker only loses its own connections. The supervisor holds no listening socket (one that
never accepts would black-hole the connections the kernel hashes to it). It forwards SIGTERM,
SIGINT and SIGHUP, replaces a worker that exits unexpectedly, and gives up (exit 1) when workers
crash in a tight loop. What a worker runs is given to it (`child_main`): the supervisor knows
processes, not the proxy; `fopproxy.process` wires the two.

Signals: the process signals stay blocked in the supervisor (they are read with `sigtimedwait`)
and in a new worker until its event loop has its handlers, so one sent at any instant is
handled, never fatal. A worker that cannot start (any exit before it reports ready) makes the
supervisor exit 1, whatever the worker's own code or signal was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fopproxy.signals import PROCESS_SIGNALS

log = logging.getLogger("fopproxy.supervisor")

RESTART_WINDOW = 60.0
MAX_RESTARTS_IN_WINDOW = 20
START_TIMEOUT = 30.0
FORWARDED = tuple(sorted(PROCESS_SIGNALS))
# What a forked worker runs: its index and the callback it calls once ready; returns its exit code.
ChildMain = Callable[[int, Callable[[], None]], int]


@dataclass
class _Child:
    index: int
    pid: int
    ready_fd: int
    ready: bool = False


@dataclass
class Supervisor:
    workers: int
    child_main: ChildMain
    # Called once, when every first worker is ready (systemd's READY=1).
    on_ready: Callable[[], None] | None = None
    children: dict[int, _Child] = field(default_factory=dict)
    restarts: list[float] = field(default_factory=list)
    on_child_exit: list[Callable[[int, int], None]] = field(default_factory=list)
    # Called on every turn of the loop (a few times a second): state the supervisor keeps for
    # the workers it will fork next (the ticket-key schedule) moves on even while none is.
    on_tick: Callable[[], None] | None = None

    def _spawn(self, index: int) -> _Child:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(read_fd)
            # The process signals stay blocked until the worker's loop handles them; only the
            # supervisor's SIGCHLD is lifted.
            signal.pthread_sigmask(signal.SIG_SETMASK, PROCESS_SIGNALS)
            for sig in FORWARDED:
                signal.signal(sig, signal.SIG_DFL)
            code = 1
            try:
                code = self._run_child(index, write_fd)
            except BaseException:  # the child must never fall back into the supervisor's code
                logging.getLogger("fopproxy").exception("worker %d crashed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        child = _Child(index, pid, read_fd)
        self.children[pid] = child
        return child

    def _run_child(self, index: int, ready_fd: int) -> int:
        def ready() -> None:
            os.write(ready_fd, b"r")
            os.close(ready_fd)

        return self.child_main(index, ready)

    def _poll_ready(self) -> None:
        for child in self.children.values():
            self._check_ready(child)

    @staticmethod
    def _check_ready(child: _Child) -> None:
        if child.ready:
            return
        try:
            data = os.read(child.ready_fd, 1)
        except BlockingIOError:
            return
        if data:
            child.ready = True
            os.close(child.ready_fd)

    def _reap(self) -> list[tuple[_Child, int]]:
        exited = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            child = self.children.pop(pid, None)
            if child is None:
                continue
            self._check_ready(child)  # it may have said ready just before exiting
            if not child.ready:
                os.close(child.ready_fd)
            code = os.waitstatus_to_exitcode(status)
            for callback in self.on_child_exit:
                callback(child.index, pid)
            exited.append((child, code))
        return exited

    def _forward(self, sig: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def run(self) -> int:
        watched = {*FORWARDED, signal.SIGCHLD}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
        try:
            return self._loop(watched)
        finally:
            # Back to the caller's mask, which still blocks the process signals: one that came
            # after the last worker exited must not kill the supervisor on its way out.
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _loop(self, watched: set[signal.Signals]) -> int:
        count = self.workers
        for index in range(count):
            self._spawn(index)
        started = time.monotonic()
        starting = True
        stopping = False
        worst = 0
        log.info("supervisor pid %d started %d workers", os.getpid(), count)
        while self.children:
            info = signal.sigtimedwait(watched, 0.2)
            if self.on_tick is not None:
                self.on_tick()
            if starting:
                self._poll_ready()
                if all(c.ready for c in self.children.values()):
                    starting = False
                    if self.on_ready is not None:
                        self.on_ready()
                        self.on_ready = None
                elif time.monotonic() - started > START_TIMEOUT:
                    log.error("workers did not start within %.0fs", START_TIMEOUT)
                    stopping = True
                    worst = 1
                    # A worker stuck starting holds SIGTERM blocked (pending until its loop runs):
                    # only SIGKILL ends it. Ready workers drain as usual.
                    for child in list(self.children.values()):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(child.pid, signal.SIGTERM if child.ready else signal.SIGKILL)
            if info is not None and info.si_signo in FORWARDED:
                if info.si_signo != signal.SIGHUP:
                    if stopping:
                        log.warning("second signal: workers stop now")
                    stopping = True
                self._forward(info.si_signo)
            for child, code in self._reap():
                if not child.ready:
                    # A worker that cannot start (port taken, killed, ...) is a failed start, even
                    # while stopping: a worker asked to stop early still reports ready first.
                    # A code of its own is kept; death by a signal (negative) or 0 reads as 1.
                    log.error("worker %d failed to start (exit %d); stopping", child.index, code)
                    worst = max(worst, code if code > 0 else 1)
                    if not stopping:
                        stopping = True
                        self._forward(signal.SIGTERM)
                    continue
                if stopping:
                    worst = max(worst, code if code >= 0 else 1)
                    continue
                if not self._may_restart():
                    log.error("workers keep crashing; giving up")
                    stopping = True
                    worst = 1
                    self._forward(signal.SIGTERM)
                    continue
                log.warning("worker %d (pid %d) exited with %d; starting a new one",
                            child.index, child.pid, code)
                self._spawn(child.index)
                starting = True
                started = time.monotonic()
        return worst if stopping else 1

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW]
        self.restarts.append(now)
        return len(self.restarts) <= MAX_RESTARTS_IN_WINDOW
