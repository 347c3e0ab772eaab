"""Request parsing in http mode: the smuggling catalogue is refused, the backend head is rebuilt."""

from __future__ import annotations

from collections import deque

import httptools
import pytest

from fopproxy.http.request import Request, RequestError, RequestReader

OK_HEAD = b"POST /pay?card=4111 HTTP/1.1\r\nHost: api.example.test\r\n"


def reader(requests: deque[Request], **overrides: object) -> RequestReader:
    settings: dict = {"max_header_bytes": 4096, "forwarded": True, "client_host": "192.0.2.7", "cert_headers": b""}
    settings.update(overrides)
    return RequestReader(requests, **settings)


def feed_in_pieces(r: RequestReader, data: bytes, size: int) -> None:
    for offset in range(0, len(data), size):
        r.feed(data[offset : offset + size])


def llhttp_alone(data: bytes) -> bool:
    """Whether llhttp by itself (no callbacks of ours) accepts `data`."""
    try:
        httptools.HttpRequestParser(object()).feed_data(data)
    except httptools.HttpParserUpgrade:
        return True  # parsed; the caller is told to switch protocols
    except httptools.HttpParserError:
        return False
    return True


# (id, request, status, whether llhttp alone would let it through)
CATALOGUE = [
    ("cl-and-te", OK_HEAD + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, False),
    ("te-and-cl", OK_HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400, False),
    ("duplicate-cl-same", OK_HEAD + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400, False),
    ("duplicate-cl-differ", OK_HEAD + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400, False),
    ("cl-list", OK_HEAD + b"Content-Length: 3, 3\r\n\r\nabc", 400, False),
    ("cl-sign", OK_HEAD + b"Content-Length: +3\r\n\r\nabc", 400, False),
    ("cl-hex", OK_HEAD + b"Content-Length: 0x3\r\n\r\nabc", 400, False),
    ("cl-space-in-name", OK_HEAD + b"Content-Length : 3\r\n\r\nabc", 400, False),
    ("obs-fold", OK_HEAD + b"X-A: b\r\n c\r\nContent-Length: 0\r\n\r\n", 400, False),
    ("obs-fold-te", OK_HEAD + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400, False),
    ("bare-lf-line", b"POST / HTTP/1.1\nHost: a\nContent-Length: 0\n\n", 400, False),
    ("bare-lf-header", OK_HEAD + b"X-A: 1\nContent-Length: 0\r\n\r\n", 400, False),
    ("bare-cr", OK_HEAD + b"X-A: 1\rX-B: 2\r\n\r\n", 400, False),
    ("nul-in-value", OK_HEAD + b"X-A: a\x00b\r\n\r\n", 400, False),
    ("te-gzip", OK_HEAD + b"Transfer-Encoding: gzip\r\n\r\n", 400, False),
    ("te-gzip-chunked", OK_HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400, True),
    ("te-chunked-chunked", OK_HEAD + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400, False),
    ("te-twice", OK_HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, False),
    ("te-xchunked", OK_HEAD + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400, False),
    ("te-in-http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, True),
    ("chunk-size-invalid", OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400, False),
    ("chunk-size-overflow", OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\nx\r\n0\r\n\r\n", 400, False),
    ("chunk-size-space", OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", 400, False),
    ("chunk-bare-lf", OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n", 400, False),
    ("chunk-data-overrun", OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n", 400, False),
    ("http09", b"GET /\r\n\r\n", 400, True),
    ("http2-version", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400, True),
    ("no-host", b"GET / HTTP/1.1\r\n\r\n", 400, True),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, True),
    ("connection-nominates-cl", OK_HEAD + b"Connection: content-length\r\nContent-Length: 3\r\n\r\nabc", 400, True),
    ("lowercase-method", b"post / HTTP/1.1\r\nHost: a\r\n\r\n", 400, False),
    ("space-in-target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, False),
    ("connect", b"CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\n", 501, True),
    ("upgrade", b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 501, True),
]


@pytest.mark.parametrize(("data", "status", "llhttp_accepts"), [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_smuggling_catalogue_is_refused(data: bytes, status: int, llhttp_accepts: bool) -> None:
    """Each request is refused with its status, and no complete head or body was produced."""
    assert llhttp_alone(data) is llhttp_accepts  # where llhttp is lenient, our check is the guard
    requests: deque[Request] = deque()
    with pytest.raises(RequestError) as refused:
        reader(requests).feed(data)
    assert refused.value.status == status
    # A refused request may have passed its head (bad chunk sizes come later), never completed.
    assert all(not r.done for r in requests)


@pytest.mark.parametrize("split", [1, 7, 64])
def test_catalogue_refused_whatever_the_read_boundaries(split: int) -> None:
    """Fed in small pieces, the CL+TE request is refused just the same."""
    data = OK_HEAD + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    r = reader(deque())
    with pytest.raises(RequestError):
        feed_in_pieces(r, data, split)


def test_backend_head_replaces_forwarding_and_client_cert_headers() -> None:
    """Client-sent X-Forwarded-*, Forwarded and Client-Cert are gone; the proxy's own are there."""
    requests: deque[Request] = deque()
    r = reader(requests, cert_headers=b"Client-Cert: :AAAA:\r\n")
    r.feed(
        OK_HEAD + b"X-Forwarded-For: 6.6.6.6\r\nx-forwarded-proto: http\r\nX-Forwarded-Host: evil\r\n"
        b"Forwarded: for=6.6.6.6\r\nClient-Cert: :ZXZpbA==:\r\nClient-Cert-Chain: :ZXZpbA==:\r\n"
        b"X-Request-Id: 42\r\nContent-Length: 2\r\n\r\nhi"
    )
    (request,) = requests
    head = request.out[0]
    assert b"6.6.6.6" not in head and b"evil" not in head and b"ZXZpbA" not in head
    assert b"X-Request-Id: 42\r\n" in head and b"Content-Length: 2\r\n" in head
    assert b"X-Forwarded-For: 192.0.2.7\r\n" in head
    assert b"X-Forwarded-Proto: https\r\n" in head
    assert b"X-Forwarded-Host: api.example.test\r\n" in head
    assert b'Forwarded: for=192.0.2.7;proto=https;host="api.example.test"\r\n' in head
    assert b"Client-Cert: :AAAA:\r\n" in head
    assert head.startswith(b"POST /pay?card=4111 HTTP/1.1\r\n") and head.endswith(b"\r\n\r\n")
    assert request.out[1:] == [b"hi"] and request.done
    assert request.path() == "/pay"


def test_forwarded_false_passes_client_headers_but_never_client_cert() -> None:
    requests: deque[Request] = deque()
    reader(requests, forwarded=False).feed(OK_HEAD + b"X-Forwarded-For: 6.6.6.6\r\nClient-Cert: :ZXZpbA==:\r\nContent-Length: 0\r\n\r\n")
    head = requests[0].out[0]
    assert b"X-Forwarded-For: 6.6.6.6\r\n" in head
    assert b"Client-Cert" not in head


def test_ipv6_client_is_quoted_in_forwarded() -> None:
    requests: deque[Request] = deque()
    reader(requests, client_host="::1").feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert b'Forwarded: for="[::1]";proto=https;host="a"\r\n' in requests[0].out[0]


def test_chunked_body_is_rechunked_without_extensions_or_trailers() -> None:
    requests: deque[Request] = deque()
    reader(requests).feed(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n")
    (request,) = requests
    assert b"Transfer-Encoding: chunked\r\n" in request.out[0]
    assert b"".join(request.out[1:]) == b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert request.body_bytes == 5


def test_hop_by_hop_and_nominated_headers_dropped() -> None:
    requests: deque[Request] = deque()
    reader(requests).feed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n\r\n")
    head = requests[0].out[0]
    assert b"X-Secret" not in head and b"Keep-Alive" not in head and b"TE:" not in head
    assert b"Connection: close\r\n" in head  # the client's wish to close is passed on
    assert not requests[0].keep_alive


@pytest.mark.parametrize("split", [None, 100])
def test_head_over_the_limit_is_431(split: int | None) -> None:
    """A head past max_header_bytes is refused, in one read or many, before it is buffered whole."""
    data = OK_HEAD + b"X-Big: " + b"a" * 8000 + b"\r\n\r\n"
    r = reader(deque(), max_header_bytes=4096)
    with pytest.raises(RequestError) as refused:
        feed_in_pieces(r, data, split or len(data))
    assert refused.value.status == 431


def test_unfinished_header_is_bounded() -> None:
    """One header that never ends is refused once it passes the limit plus the slack."""
    r = reader(deque(), max_header_bytes=4096)
    r.feed(OK_HEAD + b"X-Big: ")
    with pytest.raises(RequestError) as refused:
        feed_in_pieces(r, b"a" * 200 * 1024, 1024)
    assert refused.value.status == 431


def test_pipelined_requests_parse_in_order_and_unknown_methods_are_other() -> None:
    requests: deque[Request] = deque()
    reader(requests).feed(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nPROPFIND /b HTTP/1.1\r\nHost: a\r\n\r\nHEAD /c HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [(r.method, r.path()) for r in requests] == [("GET", "/a"), ("OTHER", "/b"), ("HEAD", "/c")]
    assert requests[2].head_only


def test_endless_trailers_are_refused() -> None:
    """Trailers are dropped, but a body that never stops sending them is refused, not held."""
    requests: deque[Request] = deque()
    r = reader(requests)
    r.feed(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n")
    with pytest.raises(RequestError) as refused:
        feed_in_pieces(r, b"X-T: 1\r\n" * 1000, 80)
    assert refused.value.status == 431
    assert not requests[0].done
