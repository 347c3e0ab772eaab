"""The short responses the proxy makes itself: status line, a one-line body, Connection: close.

Each is built once (they are constants); a proxy answer always ends the connection, since after a
refused request or a failed backend the stream cannot be trusted to be in step.
"""

from __future__ import annotations

import functools

REASON_PHRASES = {
    400: "Bad Request",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    504: "Gateway Timeout",
}


@functools.cache
def answer(status: int, *, head_only: bool = False) -> bytes:
    """The whole response for `status`; without its body for a HEAD request."""
    phrase = REASON_PHRASES[status]
    body = f"{status} {phrase}\n".encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head if head_only else head + body
