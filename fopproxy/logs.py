"""Logging set-up: text or JSON lines on stderr, one line per connection at close.

Connection events carry their fields in `record.event` (a dict built once per connection); the
formatters render it, so the relay never formats a string that no handler will print.
Never pass key material, passphrases or payload bytes to a logger.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from fopproxy.config import LoggingConfig


class TextFormatter(logging.Formatter):
    """`2026-11-29T12:00:00.123Z INFO fopproxy.conn connection closed client=... reason=done`."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = (
            f"{stamp}.{int(record.msecs):03d}Z {record.levelname} {record.name} "
            f"{record.getMessage()}"
        )
        event: dict[str, Any] | None = getattr(record, "event", None)
        if event:
            line += " " + " ".join(f"{key}={value}" for key, value in event.items())
        if record.exc_info and record.levelno >= logging.ERROR:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        event: dict[str, Any] | None = getattr(record, "event", None)
        if event:
            payload.update(event)
        if record.exc_info and record.levelno >= logging.ERROR:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, separators=(",", ":"))


def configure_logging(config: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    # asyncio logs every reset peer at ERROR with a traceback; those are counted, not errors.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
