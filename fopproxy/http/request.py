"""Strict request parsing, and the request as the backend will see it.

llhttp (through httptools) does the parsing; in its default, strict mode it already refuses
Content-Length together with Transfer-Encoding, a duplicate or malformed Content-Length, obs-fold,
bare LF line ends, CR inside values, invalid or overflowing chunk sizes and lower-case methods.
Where it is lenient we add our own checks (tests/test_http_request.py lists each case with what
llhttp alone would do):

- a Transfer-Encoding other than exactly `chunked` (llhttp accepts `gzip, chunked`);
- Transfer-Encoding in an HTTP/1.0 request (RFC 9112 6.1: the framing is not to be trusted);
- versions other than 1.0 and 1.1 (llhttp accepts `HTTP/2.0` and HTTP/0.9 request lines);
- no Host, or more than one, in HTTP/1.1 (RFC 9112 3.2);
- a Connection header that nominates a framing header (it would make us drop Content-Length);
- a head larger than `http.max_header_bytes` (431): llhttp has no limit, and httptools buffers a
  header until it ends, so the bytes of an unfinished head are bounded here too.

Nothing of a refused request is written to the backend: the head is rebuilt (and written) only
after every check passed. Bodies are re-framed by us: Content-Length bodies pass as parsed,
chunked bodies are re-chunked from the parsed data (extensions and trailers dropped), so the
backend only ever sees framing we produced.
"""

from __future__ import annotations

from collections import deque
from time import perf_counter

import httptools

# Methods with their own label value; anything else is counted as OTHER (bounded cardinality).
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"}
)
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones we add ourselves: never passed on as sent.
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
    }
)
FORWARDED_HEADERS = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
)
CLIENT_CERT_HEADERS = frozenset({b"client-cert", b"client-cert-chain"})
# Headers a Connection header must not nominate: dropping them would change the framing.
FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"host"})
# What the head rebuild does with a header, looked up once per header by its lower-case name
# (absent: passed on). One table for each `forwarded` setting.
_HOST, _TE, _CONNECTION, _DROP = range(4)
_ROLES_BASE = {
    b"host": _HOST, b"transfer-encoding": _TE, b"connection": _CONNECTION,
    **dict.fromkeys(HOP_BY_HOP - {b"transfer-encoding", b"connection"}, _DROP),
    **dict.fromkeys(CLIENT_CERT_HEADERS, _DROP),
}
ROLES = {
    False: _ROLES_BASE,
    True: {**_ROLES_BASE, **dict.fromkeys(FORWARDED_HEADERS, _DROP)},
}
# Requests parsed and waiting for the answers before them; one more is refused (400).
MAX_PIPELINED = 64
# Trailer fields of one chunked body we will hold (to drop) before refusing the request.
MAX_TRAILER_FIELDS = 64
# Beyond the limit itself, an unfinished head may hold this much before it is refused (it only
# bounds memory: the exact limit is checked on the parsed parts).
HEAD_SLACK = 64 * 1024


class RequestError(Exception):
    """A request we refuse: answered with `status`, counted by `reason`, connection closed."""

    def __init__(
        self, status: int, reason: str, method: str = "OTHER", started: float | None = None
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.method = method
        # When its first byte came (for the duration histogram); now if it never began.
        self.started = perf_counter() if started is None else started


class Request:
    """One request: what the log and metrics need, and its bytes not yet sent to the backend."""

    __slots__ = (
        "body_bytes", "chunked", "done", "keep_alive", "method", "out", "started", "target",
    )

    def __init__(self, started: float) -> None:
        self.started = started
        self.method = "OTHER"
        self.target = b""
        self.keep_alive = True
        self.chunked = False
        self.done = False
        self.body_bytes = 0
        self.out: list[bytes] = []

    @property
    def head_only(self) -> bool:
        """A HEAD's answer has a head and no body, whatever its Content-Length says."""
        return self.method == "HEAD"

    def path(self) -> str:
        """The target without its query string, for the log (llhttp refuses control
        characters, spaces and non-ASCII bytes in a path, so it prints as it is)."""
        return self.target.partition(b"?")[0][:256].decode("ascii", "replace")


def _forwarded_for(client_host: str) -> bytes:
    """RFC 7239 `for=`: an IPv6 address is bracketed and quoted."""
    if ":" in client_host:
        return b'for="[' + client_host.encode() + b']"'
    return b"for=" + client_host.encode()


def _quoted(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


class RequestReader:
    """Feeds client plaintext to llhttp and appends each parsed request to `requests`."""

    def __init__(
        self,
        requests: deque[Request],
        *,
        max_header_bytes: int,
        forwarded: bool,
        client_host: str,
        cert_headers: bytes,
    ) -> None:
        self.requests = requests
        self.max_header_bytes = max_header_bytes
        self.forwarded = forwarded
        self.client_host = client_host.encode()
        self._forwarded_for = _forwarded_for(client_host)
        self.cert_headers = cert_headers
        self.roles = ROLES[forwarded]
        self._parser = httptools.HttpRequestParser(self)
        self._current: Request | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._url: list[bytes] = []
        self._head_size = 0
        self._in_head = True  # between requests counts as head: the next bytes start one
        self._unfinished = 0
        self._heads_done = 0
        self._error: RequestError | None = None
        # A request said Connection: close (or was HTTP/1.0 without keep-alive): whatever the
        # client sends after it is not read (RFC 9112 9.6), and llhttp refuses to parse it.
        self.finished = False

    @property
    def mid_request(self) -> bool:
        """Bytes of a request have been read that are not yet a whole request."""
        return self._current is not None

    # ---- input -------------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Parse `data`; raises RequestError for a request that must be refused."""
        if self.finished:
            return
        heads = self._heads_done
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.finished and self._error is None:
                return  # bytes after the last request (Connection: close): discarded
            raise self._refusal(exc) from None
        if not self._in_head and len(self._headers) > MAX_TRAILER_FIELDS:
            # Trailer fields are dropped, but llhttp hands each one over: bound how many wait.
            raise self._error_now(431, "header_too_large")
        if self._in_head:
            # An unfinished head: httptools holds its last header until the header ends.
            self._unfinished = len(data) if heads != self._heads_done else self._unfinished + len(
                data
            )
            if self._unfinished > self.max_header_bytes + HEAD_SLACK:
                raise self._error_now(431, "header_too_large")

    def _refusal(self, exc: httptools.HttpParserError) -> RequestError:
        """The RequestError for what llhttp (or one of our callbacks) refused."""
        if isinstance(exc, httptools.HttpParserCallbackError):
            error = self._error
            assert error is not None  # only our callbacks raise, and they set it first
            return error
        if isinstance(exc, httptools.HttpParserUpgrade):  # refused in on_headers_complete
            return self._error_now(501, "upgrade_refused")
        return self._error_now(400, "bad_request")  # the invalid-method error included

    def _error_now(self, status: int, reason: str) -> RequestError:
        current = self._current
        if current is None:
            return RequestError(status, reason)
        return RequestError(status, reason, current.method, current.started)

    def _fail(self, status: int, reason: str) -> None:
        self._error = self._error_now(status, reason)
        raise self._error

    # ---- llhttp callbacks ----------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        # The first callback of a request (no on_message_begin: one Python call less each).
        if self._current is None:
            self._current = Request(perf_counter())
            self._headers = []
            self._url = []
            self._head_size = 0
        self._url.append(url)  # may come in pieces, one per feed
        self._head_size += len(url)
        if self._head_size > self.max_header_bytes:
            self._fail(431, "header_too_large")

    def on_header(self, name: bytes, value: bytes) -> None:
        # The hot callback (one per header): only collect. The size is checked once the head
        # is complete (memory meanwhile is bounded in feed); trailers land in a list that
        # on_headers_complete swapped in and nobody reads.
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self._current
        assert request is not None
        parser = self._parser
        method = parser.get_method().decode("ascii", "replace")
        request.method = method if method in KNOWN_METHODS else "OTHER"
        version = parser.get_http_version()
        if version not in {"1.1", "1.0"}:
            self._fail(400, "bad_version")
        if method == "CONNECT" or parser.should_upgrade():
            self._fail(501, "upgrade_refused")
        request.target = b"".join(self._url)
        self._in_head = False
        self._heads_done += 1
        request.keep_alive = parser.should_keep_alive()
        headers, self._headers = self._headers, []  # trailers, if any, go to the new list
        request.out.append(self._backend_head(request, method, version, headers))
        if len(self.requests) >= MAX_PIPELINED:
            # One read can hold thousands of tiny requests; each waiting one costs memory.
            self._fail(400, "pipeline_too_deep")
        self.requests.append(request)

    def _backend_head(
        self, request: Request, method: str, version: str, headers: list[tuple[bytes, bytes]]
    ) -> bytes:
        """The head the backend gets: the client's, less what it must not be able to forge."""
        roles = self.roles
        hosts: list[bytes] = []
        nominated: set[bytes] = set()
        kept: list[bytes] = [
            method.encode(), b" ", request.target, b" HTTP/", version.encode(), b"\r\n"
        ]
        size = self._head_size
        for name, value in headers:
            size += len(name) + len(value) + 4
            role = roles.get(name.lower())
            if role is None:
                kept += (name, b": ", value, b"\r\n")
            elif role == _HOST:
                hosts.append(value)
                kept += (name, b": ", value, b"\r\n")
            elif role == _TE:
                # llhttp accepts any list ending in chunked; we pass only plain chunked.
                if value.strip().lower() != b"chunked" or version == "1.0":
                    self._fail(400, "transfer_encoding")
                request.chunked = True
            elif role == _CONNECTION:
                for token in value.lower().split(b","):
                    nominated.add(token.strip())
        if size > self.max_header_bytes:
            self._fail(431, "header_too_large")
        if version == "1.1" and len(hosts) != 1:
            self._fail(400, "host")
        if nominated & FRAMING_HEADERS:
            self._fail(400, "connection_header")
        if nominated:
            kept = self._without(kept, nominated)
        if request.chunked:
            kept.append(b"Transfer-Encoding: chunked\r\n")
        if not request.keep_alive:
            kept.append(b"Connection: close\r\n")
        if self.forwarded:
            kept += (b"X-Forwarded-For: ", self.client_host, b"\r\nX-Forwarded-Proto: https\r\n")
            forwarded = [b"Forwarded: ", self._forwarded_for, b";proto=https"]
            if hosts:
                kept += (b"X-Forwarded-Host: ", hosts[0], b"\r\n")
                forwarded += (b";host=", _quoted(hosts[0]))
            kept += (*forwarded, b"\r\n")
        kept += (self.cert_headers, b"\r\n")
        return b"".join(kept)

    @staticmethod
    def _without(kept: list[bytes], nominated: set[bytes]) -> list[bytes]:
        """Drop the header lines a Connection header named (rare: rebuild the list)."""
        result = kept[:6]
        for index in range(6, len(kept), 4):
            if kept[index].lower() not in nominated:
                result += kept[index : index + 4]
        return result

    def on_body(self, body: bytes) -> None:
        request = self._current
        assert request is not None
        request.body_bytes += len(body)
        if request.chunked:
            request.out += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            request.out.append(body)

    def on_message_complete(self) -> None:
        request = self._current
        assert request is not None
        if request.chunked:
            request.out.append(b"0\r\n\r\n")
        request.done = True
        if not request.keep_alive:
            self.finished = True
        self._current = None
        self._in_head = True
        self._unfinished = 0
