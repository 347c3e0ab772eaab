"""One log line per request in `mode: http` (instead of tcp mode's line per connection).

Fields: method, path (no query string: it may carry personal data), status, bytes in and out
(bodies in, whole response out), duration, client, client certificate subject, and why the proxy
answered itself (`reason`, `-` when the backend answered). Never payload bytes.

Like the connection line (logs.py), the common case is a fast path: with fopproxy's own handler
as the only one, the line is formatted here with one `%` (the duration from whole microseconds,
no float formatting) and queued in the handler's batch. Which path applies is decided once per
worker (`AccessLog`), after logging was configured. Measured: through a LogRecord and a write per
line the log cost about a third of the proxy's CPU per keep-alive request (bench/ --http); this
way a line is ≈17 k instructions (callgrind; the `%` format of its fields is most of it), about a
sixth of what http mode spends per request (docs/PERFORMANCE.md).
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
    "duration=%d.%06d client=%s cert=%s reason=%s\n"
)


class AccessLog:
    """The access line of one worker: enabled or not, fast path or ordinary records."""

    __slots__ = ("_add_line", "_json", "enabled")

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and log.isEnabledFor(logging.INFO)
        handlers = logging.root.handlers
        handler = handlers[0] if len(handlers) == 1 else None
        fast = isinstance(handler, BatchingHandler) and not log.handlers and log.propagate
        self._add_line = handler.add_line if fast else None  # type: ignore[union-attr]
        self._json = bool(fast and handler.json_lines)  # type: ignore[union-attr]

    def request(
        self, method: str, path: str, status: int, bytes_in: int, bytes_out: int, micros: int,
        client: str, cert: str, reason: str,
    ) -> None:
        """Log one request (`micros`: its duration in whole microseconds)."""
        add_line = self._add_line
        if add_line is not None and not self._json:
            now = time.time()
            second = int(now)
            seconds, fraction = divmod(micros, 1_000_000)
            add_line(
                _ACCESS_TEXT % (
                    utc_second(second), int((now - second) * 1000), method, path, status,
                    bytes_in, bytes_out, seconds, fraction, client, cert, reason,
                )
            )
            return
        event = dict(
            zip(
                ACCESS_FIELDS,
                (method, path, status, bytes_in, bytes_out, micros / 1e6, client, cert, reason),
                strict=True,
            )
        )
        if add_line is not None:
            payload = {"ts": round(time.time(), 6), "level": "info", "logger": "fopproxy.http",
                       "msg": "request", **event}
            add_line(json.dumps(payload, separators=(",", ":")) + "\n")
            return
        # makeRecord + handle is what log.info does, minus findCaller's walk up the stack.
        log.handle(
            log.makeRecord(
                log.name, logging.INFO, __file__, 0, "request", (), None, extra={"event": event}
            )
        )
