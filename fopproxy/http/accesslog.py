"""One log line per request in `mode: http` (instead of tcp mode's line per connection).

Fields: method, path (no query string: it may carry personal data), status, bytes in and out
(bodies in, whole response out), duration, client, client certificate subject. The path is
logged as the client sent it, cut at 256 characters; never payload bytes.
"""

from __future__ import annotations

import logging

log = logging.getLogger("fopproxy.http")

ACCESS_FIELDS = (
    "method", "path", "status", "bytes_in", "bytes_out", "duration", "client", "cert", "reason",
)


def request_done(
    method: str, path: str, status: int, bytes_in: int, bytes_out: int, duration: float,
    client: str, cert: str, reason: str,
) -> None:
    """Log the access line at INFO; `reason` says why the proxy answered (or `-`)."""
    if not log.isEnabledFor(logging.INFO):
        return
    event = dict(
        zip(
            ACCESS_FIELDS,
            (method, path, status, bytes_in, bytes_out, round(duration, 6), client, cert, reason),
            strict=True,
        )
    )
    # makeRecord + handle is what log.info does, minus findCaller's walk up the stack.
    log.handle(
        log.makeRecord(
            log.name, logging.INFO, __file__, 0, "request", (), None, extra={"event": event}
        )
    )
