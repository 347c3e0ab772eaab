"""Logging set-up: text or JSON lines on stderr, one line per connection at close.

Connection events carry their fields in `record.event` (a dict built once per connection); the
formatters render it, so the relay never formats a string that no handler will print.
Never pass key material, passphrases or payload bytes to a logger.

The connection line is the one log line per connection, so it has a fast path
(`connection_closed`): its fields come in a fixed order (`CONNECTION_FIELDS`) and, with the
handler `configure_logging` installs, the text line is one `%` format of them (no LogRecord, no
dict, no handler locks, no float repr); lines are written in batches: at most `FLUSH_DELAY`
seconds late, at once when `FLUSH_BYTES` are waiting or a record of any other kind is logged
(order is kept), and on exit. A batch is written with one `write` per at most PIPE_BUF bytes cut
at line ends, so lines of several workers sharing a pipe never interleave mid-line. Measured:
≈40 µs of CPU per connection through `logging`; ≈40k instructions per line through an event
dict; ≈15k this way (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import select
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from fopproxy.config import LoggingConfig

if TYPE_CHECKING:
    from fopproxy.clientauth import ClientIdentity


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    """`2026-11-29T12:00:00` for a Unix second: strftime once a second, not once a line."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


utc_second = _utc_second  # for the other fast-path lines (fopproxy/http/accesslog.py)


class TextFormatter(logging.Formatter):
    """`2026-11-29T12:00:00.123Z INFO fopproxy.conn connection closed direction=inbound ...`."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_utc_second(int(record.created))}.{int(record.msecs):03d}Z {record.levelname} "
            f"{record.name} {record.getMessage()}"
        )
        event: dict[str, Any] | None = getattr(record, "event", None)
        if event:
            line += " " + " ".join(f"{key}={_text_value(value)}" for key, value in event.items())
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


def _text_value(value: object) -> object:
    """A value as `key=value` text: quoted (JSON string rules) where a space, quote, `=` or a
    control character would break the line apart (a certificate subject can hold any of them)."""
    if isinstance(value, str) and (
        not value.isprintable() or any(c in value for c in ' "=\\')
    ):
        return json.dumps(value)
    return value


# The connection line's fields, in order; `duration` is given in whole microseconds and written
# as seconds.
CONNECTION_FIELDS = (
    "client", "sni", "version", "cipher", "bytes_to_backend", "bytes_to_client", "duration",
    "reason",
)
# `direction=inbound` tells these lines from the outbound ones (outbound/pump.py), which carry
# other fields after `direction=outbound`.
_CONNECTION_TEXT = (
    "%s.%03dZ INFO fopproxy.conn connection closed direction=inbound client=%s sni=%s version=%s "
    "cipher=%s bytes_to_backend=%d bytes_to_client=%d duration=%d.%06d reason=%s"
)
# Appended where a client certificate was verified (tls.client_auth).
CLIENT_CERT_FIELDS = ("client_subject", "client_sha256")


def connection_event(
    client: str, sni: str, version: str, cipher: str, to_backend: int, to_client: int,
    micros: int, reason: str, client_cert: ClientIdentity | None = None,
) -> dict[str, Any]:
    """The connection line's fields as a dict, for the formatters of ordinary records."""
    event: dict[str, Any] = {"direction": "inbound"} | dict(
        zip(
            CONNECTION_FIELDS,
            (client, sni, version, cipher, to_backend, to_client, micros / 1e6, reason),
            strict=True,
        )
    )
    if client_cert is not None:
        event["client_subject"] = client_cert.subject
        event["client_sha256"] = client_cert.fingerprint
    return event


FLUSH_DELAY = 0.1
FLUSH_BYTES = 16 * 1024
PIPE_BUF = getattr(select, "PIPE_BUF", 4096)


class BatchingHandler(logging.StreamHandler[TextIO]):
    """StreamHandler that also takes pre-formatted connection lines and writes them in batches."""

    def __init__(self, stream: TextIO, json_lines: bool) -> None:
        super().__init__(stream)
        self.json_lines = json_lines
        self._pending: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.flush_lines()  # keep the order of lines
        super().emit(record)

    def connection_closed(
        self, client: str, sni: str, version: str, cipher: str, to_backend: int,
        to_client: int, micros: int, reason: str, client_cert: ClientIdentity | None = None,
    ) -> None:
        now = time.time()
        if self.json_lines:
            payload = {"ts": round(now, 6), "level": "info", "logger": "fopproxy.conn",
                       "msg": "connection closed"}
            payload.update(connection_event(
                client, sni, version, cipher, to_backend, to_client, micros, reason, client_cert
            ))
            line = json.dumps(payload, separators=(",", ":")) + "\n"
        else:
            second = int(now)
            seconds, fraction = divmod(micros, 1_000_000)
            line = _CONNECTION_TEXT % (
                _utc_second(second), int((now - second) * 1000), client, sni, version, cipher,
                to_backend, to_client, seconds, fraction, reason,
            )
            if client_cert is not None:
                line += (
                    f" client_subject={json.dumps(client_cert.subject)}"
                    f" client_sha256={client_cert.fingerprint}"
                )
            line += "\n"
        self.add_line(line)

    def add_line(self, line: str) -> None:
        """Queue one pre-formatted line (newline included) for the next batch."""
        self._pending.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush_lines()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush_lines()
                return
            self._timer = loop.call_later(FLUSH_DELAY, self.flush_lines)

    def flush_lines(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        lines, self._pending, self._size = self._pending, [], 0
        stream = self.stream
        stream.flush()
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a real file: let it buffer
            stream.write("".join(lines))
            stream.flush()
            return
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            data = line.encode("utf-8", "backslashreplace")
            if chunk and size + len(data) > PIPE_BUF:
                _write_all(fd, b"".join(chunk))
                chunk, size = [], 0
            chunk.append(data)
            size += len(data)
        if chunk:
            _write_all(fd, b"".join(chunk))

    def flush(self) -> None:
        self.flush_lines()
        super().flush()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        except OSError:
            return  # stderr is gone: dropping a log line must not stop the proxy
        view = view[written:]


def connection_closed(
    logger: logging.Logger, client: str, sni: str, version: str, cipher: str,
    to_backend: int, to_client: int, micros: int, reason: str,
    client_cert: ClientIdentity | None = None,
) -> None:
    """Log the connection line at INFO: the fast path when our handler is the only one."""
    handlers = logging.root.handlers
    if (
        len(handlers) == 1
        and isinstance(handlers[0], BatchingHandler)
        and not logger.handlers
        and logger.propagate
    ):
        handlers[0].connection_closed(
            client, sni, version, cipher, to_backend, to_client, micros, reason, client_cert
        )
        return
    # makeRecord + handle is what logger.info does, minus findCaller's walk up the stack.
    event = connection_event(
        client, sni, version, cipher, to_backend, to_client, micros, reason, client_cert
    )
    logger.handle(
        logger.makeRecord(
            logger.name, logging.INFO, __file__, 0, "connection closed", (), None,
            extra={"event": event},
        )
    )


def configure_logging(config: LoggingConfig) -> None:
    handler = BatchingHandler(sys.stderr, json_lines=config.format == "json")
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    # Neither formatter prints process or thread names: skip looking them up for every record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # asyncio logs every reset peer at ERROR with a traceback; those are counted, not errors.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
