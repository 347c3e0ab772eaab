"""The signals fopproxy acts on, blocked from the first instant until a handler is in place.

SIGTERM/SIGINT drain and SIGHUP reloads, but until the event loop's handlers are installed their
default action would kill the process ("Hangup", exit 129) or lose a stop request. Blocked, a
signal stays pending and is handled the moment its handler is installed and the mask lifted.
"""

from __future__ import annotations

import signal

PROCESS_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def block() -> set[int]:
    """Hold the process signals pending; returns the mask before, for `restore`."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, PROCESS_SIGNALS)


def unblock() -> None:
    """Deliver what is pending: call only once every process signal has a handler."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PROCESS_SIGNALS)


def restore(previous: set[int]) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)
