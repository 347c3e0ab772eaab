"""One log line per request in `mode: http` (instead of tcp mode's line per connection).

Fields: method, path (no query string: it may carry personal data), status, bytes in and out
(bodies in, whole response out), duration, client, client certificate subject, and why the proxy
answered itself (`reason`, `-` when the backend answered). Never payload bytes.

Like the connection line (logs.py), the common case is a fast path: with fopproxy's own handler
as the only one, the line is formatted here with one `%` and queued in its batch (measured in
bench/ --http: through a LogRecord and a write per line it cost about a third of the proxy's CPU
per keep-alive request).
"""

from __future__ import annotations

import json
import logging
import time

from fopproxy.logs import BatchingHandler, utc_second

log = logging.getLogger("fopproxy.http")

ACCESS_FIELDS = (
    "method", "path", "status", "bytes_in", "bytes_out", "duration", "client", "cert", "reason",
)
_ACCESS_TEXT = (
    "%s.%03dZ INFO fopproxy.http request method=%s path=%s status=%d bytes_in=%d bytes_out=%d "
    "duration=%.6f client=%s cert=%s reason=%s\n"
)


def request_done(
    method: str, path: str, status: int, bytes_in: int, bytes_out: int, duration: float,
    client: str, cert: str, reason: str,
) -> None:
    """Log the access line at INFO."""
    if not log.isEnabledFor(logging.INFO):
        return
    handlers = logging.root.handlers
    if (
        len(handlers) == 1
        and isinstance(handler := handlers[0], BatchingHandler)
        and not log.handlers
        and log.propagate
    ):
        now = time.time()
        if handler.json_lines:
            payload = {"ts": round(now, 6), "level": "info", "logger": "fopproxy.http",
                       "msg": "request"}
            payload.update(_event(method, path, status, bytes_in, bytes_out, duration, client,
                                  cert, reason))
            line = json.dumps(payload, separators=(",", ":")) + "\n"
        else:
            second = int(now)
            line = _ACCESS_TEXT % (
                utc_second(second), int((now - second) * 1000), method, path, status, bytes_in,
                bytes_out, duration, client, cert, reason,
            )
        handler.add_line(line)
        return
    # makeRecord + handle is what log.info does, minus findCaller's walk up the stack.
    log.handle(
        log.makeRecord(
            log.name, logging.INFO, __file__, 0, "request", (), None,
            extra={"event": _event(method, path, status, bytes_in, bytes_out, duration, client,
                                   cert, reason)},
        )
    )


def _event(
    method: str, path: str, status: int, bytes_in: int, bytes_out: int, duration: float,
    client: str, cert: str, reason: str,
) -> dict[str, object]:
    return dict(
        zip(
            ACCESS_FIELDS,
            (method, path, status, bytes_in, bytes_out, round(duration, 6), client, cert, reason),
            strict=True,
        )
    )
