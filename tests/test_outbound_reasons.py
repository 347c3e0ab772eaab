"""Outbound reasons: the README lists exactly what the code logs and counts."""

from __future__ import annotations

import errno
import re
import socket
import ssl
from pathlib import Path

from fopproxy.outbound.pump import OutboundCloseReason
from fopproxy.outbound.reasons import (
    HANDSHAKE_ERROR_REASONS,
    classify_connect_error,
    classify_handshake_error,
)

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SECTION = README[README.index("## Calling Google from a legacy app"):]


def test_readme_lists_the_refusal_reasons() -> None:
    sentence = re.search(r"reason logged and counted: (.+?)\.\n", SECTION, re.S)
    assert sentence is not None
    assert re.findall(r"`([a-z_]+)`", sentence.group(1)) == list(HANDSHAKE_ERROR_REASONS)


def test_readme_lists_the_close_reasons() -> None:
    sentence = re.search(r"Outbound `reason` is one of\s+(.+?)\s+\(a refusal", SECTION, re.S)
    assert sentence is not None
    listed = re.findall(r"`([a-z_]+)(:<[^`]+>)?`", sentence.group(1))
    assert [name for name, _ in listed] == [reason.value for reason in OutboundCloseReason]


def test_connect_errors() -> None:
    assert classify_connect_error(OSError(errno.ECONNREFUSED, "refused")) == "connect_refused"
    assert classify_connect_error(OSError(errno.ENETUNREACH, "unreachable")) == "connect_unreachable"
    assert classify_connect_error(socket.gaierror(-2, "Name or service not known")) == "dns"
    assert classify_connect_error(TimeoutError()) == "connect_timeout"


def test_handshake_failure_alert_before_and_after_the_servers_first_flight() -> None:
    """The same alert means "no suite in common" first thing, "no client certificate" later,
    and "old protocol" when the server's record already spoke TLS 1.1."""
    alert = ssl.SSLError(1, "alert")
    alert.reason = "SSLV3_ALERT_HANDSHAKE_FAILURE"  # type: ignore[misc]
    assert classify_handshake_error(alert, server_answered=False) == "no_shared_cipher"
    assert classify_handshake_error(alert, server_answered=True) == "client_certificate_rejected"
    assert classify_handshake_error(alert, server_answered=False,
                                    server_record_version=0x0302) == "protocol_version"
