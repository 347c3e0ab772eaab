"""Where each backend response ends: the bytes go to the client as sent, llhttp only watches.

Relaying the backend's bytes unchanged costs one TLS write per read and no copy of the head;
the parser tells the pump the status, whether the backend keeps the connection, and when the
final response is complete. Two cases llhttp cannot know by itself:

- an answer to HEAD has no body whatever its Content-Length says: its head is cut out of the
  stream (each head ends at the first CRLFCRLF, since llhttp refuses bare LF) and parsed alone;
- a response with neither Content-Length nor chunked ends when the backend closes
  (`until_close`): the pump ends it at EOF.
"""

from __future__ import annotations

import httptools

# A response head larger than this is a broken backend, not an answer.
MAX_RESPONSE_HEAD = 64 * 1024


class ResponseError(Exception):
    """The backend sent something that is not an HTTP/1.1 response."""


class ResponseTracker:
    """Follows the responses on one backend connection, one request at a time."""

    __slots__ = (
        "_framed", "_head", "_head_fed", "_head_only", "_in_head", "_parser", "body_bytes",
        "complete", "final_status", "keep_alive", "started", "status", "until_close",
    )

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = False
        self._head = b""
        self.reset(head_only=False)

    def reset(self, *, head_only: bool) -> None:
        """Expect the response to the next request (`head_only` for HEAD)."""
        if self._head_only:
            # The parser that read a HEAD answer's head still waits for its body: replace it.
            self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self._head = b""
        self.status = 0
        self._framed = False
        self._in_head = True
        self._head_fed = 0
        self.final_status = 0
        self.complete = False
        self.keep_alive = True
        self.until_close = False
        self.started = False
        self.body_bytes = 0

    def feed(self, data: bytes | memoryview) -> None:
        """Observe `data`; raises ResponseError for a malformed response."""
        self.started = True
        if self._head_only:
            self._feed_heads(bytes(data))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise ResponseError(str(exc)) from None
        if self._in_head:
            # httptools holds an unfinished header until it ends: bound a head that never does.
            self._head_fed += len(data)
            if self._head_fed > MAX_RESPONSE_HEAD:
                raise ResponseError("response head too large")

    def _feed_heads(self, data: bytes) -> None:
        buffer = self._head + data
        while not self.complete:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_RESPONSE_HEAD:
                    raise ResponseError("response head too large")
                self._head = buffer
                return
            head, buffer = buffer[: end + 4], buffer[end + 4 :]
            # A fresh parser per head: after a HEAD answer llhttp would wait for the body.
            self._parser = httptools.HttpResponseParser(self)
            try:
                self._parser.feed_data(head)
            except httptools.HttpParserError as exc:
                raise ResponseError(str(exc)) from None
            if self.status >= 200:
                self.final_status = self.status
                self.keep_alive = self._parser.should_keep_alive()
                self.complete = True
                self.until_close = False
        self._head = b""
        if buffer:
            raise ResponseError("bytes after the answer to HEAD")

    # ---- llhttp callbacks ----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        # Only the length of the name is looked at for most headers: no lower() per header.
        if len(name) in (14, 17) and name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self.status = status = self._parser.get_status_code()
        self._in_head = False
        self._head_fed = 0
        if status == 101:
            raise ResponseError("101 Switching Protocols: upgrades are refused")
        # RFC 9112 6.3: no length, not chunked, not 204/304: the body runs to the close.
        self.until_close = status >= 200 and status not in (204, 304) and not self._framed

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        if self.status < 200:
            self._in_head = True  # 100 Continue, 103 Early Hints: the final answer is to come
            self._framed = False
            return
        if self.complete:
            raise ResponseError("a second response with no request outstanding")
        self.final_status = self.status
        self.keep_alive = self._parser.should_keep_alive()
        self.complete = True
        self.until_close = False

    def finish_at_eof(self) -> bool:
        """The backend closed: True if that ended the response (read-until-close framing)."""
        if self.until_close and not self.complete and self.status >= 200:
            self.final_status = self.status
            self.keep_alive = False
            self.complete = True
            return True
        return False
