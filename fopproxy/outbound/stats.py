"""Per-outbound counters, plain Python numbers like stats.Stats: the hot path pays an addition."""

from __future__ import annotations

from collections import defaultdict

# `direction` of fopproxy_outbound_bytes_total: plaintext bytes from the app to the TLS server,
# and from the server back to the app.
DIRECTIONS = ("to_server", "to_app")


class OutboundStats:
    """What one outbound counted in this process; monotonic except `active` and the gauges."""

    __slots__ = (
        "active",
        "bytes_to_app",
        "bytes_to_server",
        "handshake_errors",
        "handshakes",
        "name",
        "peer_not_after",
        "resumed",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.handshakes: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.handshake_errors: defaultdict[str, int] = defaultdict(int)
        self.resumed = 0
        self.active = 0
        self.bytes_to_server = 0
        self.bytes_to_app = 0
        # not-after (Unix seconds) of the certificate the server showed last; 0 before any.
        self.peer_not_after = 0.0
