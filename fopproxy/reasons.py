"""Why a connection closed: the `reason=` of its log line, one fixed set checked against README."""

from __future__ import annotations

from enum import StrEnum


class CloseReason(StrEnum):
    """The values are the exact text logged; the DETAILED ones are followed by `:<detail>`."""

    DONE = "done"
    IDLE_TIMEOUT = "idle_timeout"
    CLIENT_RESET = "client_reset"
    BACKEND_RESET = "backend_reset"
    DRAIN_TIMEOUT = "drain_timeout"
    TLS_WRITE_ERROR = "tls_write_error"
    HANDSHAKE_ERROR = "handshake_error"
    BACKEND_CONNECT = "backend_connect"
    TLS_ERROR = "tls_error"
    CLIENT_AUTH = "client_auth"  # a refused client certificate (tls.client_auth)

    def text(self, detail: str | None = None) -> str:
        """The logged form: `handshake_error:timeout`, or the bare value."""
        # `_value_`, not `value`: the enum property is two Python calls, once per connection.
        return f"{self._value_}:{detail}" if detail is not None else self._value_


# Reasons always logged with a detail (a bounded label, or OpenSSL's reason in lower case).
DETAILED = frozenset(
    {
        CloseReason.HANDSHAKE_ERROR,
        CloseReason.BACKEND_CONNECT,
        CloseReason.TLS_ERROR,
        CloseReason.CLIENT_AUTH,
    }
)
