"""systemd's readiness protocol (sd_notify), for `Type=notify` units.

With `Type=notify`, systemd counts fopproxy as started only when it says READY=1, so
`systemctl start` returns when the port serves, and `systemctl reload` (SIGHUP) waits until
then instead of landing in CPython's start-up, before fopproxy can hold any signal.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("fopproxy")


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1") to $NOTIFY_SOCKET; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot tell systemd %s: %s", state, exc)
        return False
    return True
