"""PROXY protocol headers, decoded by tests/support/ppparse.py (written from the spec, not ours)."""

from __future__ import annotations

import pytest

from fopproxy.proxyproto import TLSDetails, header, header_v1, header_v2
from tests.support.ppparse import ProxyHeaderError, parse


def test_v1_tcp4_is_the_spec_line() -> None:
    """A v1 header for IPv4 is exactly the line of the spec's example, CRLF included."""
    raw = header_v1(("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert raw == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    parsed, rest = parse(raw + b"GET /")
    assert (parsed.family, parsed.src, parsed.dst, parsed.sport, parsed.dport) == (
        "TCP4", "192.168.0.1", "192.168.0.11", 56324, 443,
    )
    assert rest == b"GET /"


def test_v1_tcp6_takes_the_four_tuple_python_returns() -> None:
    """An AF_INET6 peername (host, port, flowinfo, scope) becomes a TCP6 line."""
    parsed, _ = parse(header_v1(("2001:db8::1", 1234, 0, 0), ("::1", 8443, 0, 0)))
    assert (parsed.family, parsed.src, parsed.dst, parsed.sport, parsed.dport) == (
        "TCP6", "2001:db8::1", "::1", 1234, 8443,
    )


def test_dual_stack_ipv4_clients_are_told_as_ipv4() -> None:
    """A client reaching a [::] listener over IPv4 is TCP4 to the backend, in v1 and v2."""
    src, dst = ("::ffff:10.0.0.7", 42310, 0, 0), ("::ffff:10.0.0.1", 8443, 0, 0)
    v1, _ = parse(header_v1(src, dst))
    v2, _ = parse(header_v2(src, dst))
    for parsed in (v1, v2):
        assert (parsed.family, parsed.src, parsed.dst) == ("TCP4", "10.0.0.7", "10.0.0.1")


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (None, ("127.0.0.1", 8443)),  # the transport lost its peer
        ("/run/client.sock", "/run/proxy.sock"),  # a Unix socket
        (("10.0.0.1", 1), ("2001:db8::1", 2, 0, 0)),  # mixed families
    ],
)
def test_v1_unknown_where_no_tcp_pair(src: object, dst: object) -> None:
    """The spec's UNKNOWN form where there is no TCP4/TCP6 pair to tell."""
    assert header_v1(src, dst) == b"PROXY UNKNOWN\r\n"  # type: ignore[arg-type]
    assert parse(b"PROXY UNKNOWN\r\n")[0].family == "UNKNOWN"


def test_v2_tcp4_bytes_match_the_spec_layout() -> None:
    """Signature, 0x21 (v2 PROXY), 0x11 (TCP over IPv4), length 12, addresses, ports: written out."""
    raw = header_v2(("192.0.2.1", 0x1234), ("192.0.2.2", 443))
    assert raw == (
        b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11\x00\x0c"
        + bytes([192, 0, 2, 1, 192, 0, 2, 2]) + b"\x12\x34\x01\xbb"
    )


def test_v2_tcp6_and_unix_and_unspec() -> None:
    """TCP6 and AF_UNIX address blocks parse back; an unusable pair is UNSPEC (address ignored)."""
    tcp6, _ = parse(header_v2(("2001:db8::7", 5000, 0, 0), ("2001:db8::1", 443, 0, 0)))
    assert (tcp6.family, tcp6.src, tcp6.dst, tcp6.sport, tcp6.dport) == (
        "TCP6", "2001:db8::7", "2001:db8::1", 5000, 443,
    )
    unix, _ = parse(header_v2("/run/a.sock", "/run/b.sock"))
    assert (unix.family, unix.src, unix.dst) == ("UNIX", "/run/a.sock", "/run/b.sock")
    assert len(unix.raw) == 16 + 216
    unspec, _ = parse(header_v2(None, ("127.0.0.1", 1)))
    assert (unspec.command, unspec.family, len(unspec.raw)) == ("PROXY", "UNSPEC", 16)


def test_v2_local_command_carries_no_address() -> None:
    """LOCAL (the proxy's own connection): the 16-byte fixed header alone."""
    local, rest = parse(header_v2(None, None, local=True) + b"x")
    assert (local.command, local.family, len(local.raw), rest) == ("LOCAL", "UNSPEC", 16, b"x")


def test_v2_tlvs_of_a_verified_client_certificate() -> None:
    """SNI as AUTHORITY; SSL with client|cert_conn|cert_sess, verify 0, and every sub-TLV."""
    tls = TLSDetails(
        version="TLSv1.2", cipher="ECDHE-ECDSA-AES128-GCM-SHA256", sni="api.example.com",
        sig_alg="ecdsa-with-SHA256", key_alg="EC256", cert_conn=True, cert_sess=True,
        verified=True, cn="payments.google.com",
    )
    parsed, rest = parse(header_v2(("127.0.0.1", 40000), ("127.0.0.1", 8443), tls) + b"body")
    assert rest == b"body"
    assert parsed.authority == "api.example.com"
    ssl = parsed.ssl
    assert ssl is not None
    assert (ssl.is_ssl, ssl.cert_conn, ssl.cert_sess, ssl.verify) == (True, True, True, 0)
    assert (ssl.version, ssl.cipher, ssl.sig_alg, ssl.key_alg, ssl.cn) == (
        "TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", "ecdsa-with-SHA256", "EC256",
        "payments.google.com",
    )


def test_v2_without_client_certificate_says_not_verified_and_sends_no_cn() -> None:
    """No client certificate: only the SSL flag, verify non-zero, no CN even if one is passed."""
    tls = TLSDetails(version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", cn="ignored")
    ssl = parse(header_v2(("127.0.0.1", 1), ("127.0.0.1", 2), tls))[0].ssl
    assert ssl is not None
    assert (ssl.client, ssl.verify != 0, ssl.cn, ssl.version) == (1, True, None, "TLSv1.3")
    assert parse(header_v2(("127.0.0.1", 1), ("127.0.0.1", 2), TLSDetails()))[0].authority is None


def test_v2_resumed_session_sets_only_the_session_flag() -> None:
    """A certificate known from the resumed session (not sent again): CERT_SESS without CONN."""
    tls = TLSDetails(cert_sess=True, verified=True, cn="c")
    ssl = parse(header_v2(("127.0.0.1", 1), ("127.0.0.1", 2), tls))[0].ssl
    assert ssl is not None
    assert (ssl.cert_conn, ssl.cert_sess, ssl.verify, ssl.cn) == (False, True, 0, "c")


def test_v2_oversized_value_is_left_out_not_truncated() -> None:
    """A value that cannot fit a 16-bit TLV is omitted (as HAProxy does) and the header parses."""
    tls = TLSDetails(version="TLSv1.2", cert_conn=True, verified=True, cn="x" * 70000)
    ssl = parse(header_v2(("127.0.0.1", 1), ("127.0.0.1", 2), tls))[0].ssl
    assert ssl is not None
    assert (ssl.cn, ssl.version) == (None, "TLSv1.2")


def test_header_dispatch_and_off() -> None:
    """`proxy_protocol: off` sends nothing; v1/v2 dispatch to their encoders."""
    src, dst = ("127.0.0.1", 1), ("127.0.0.1", 2)
    assert header("off", src, dst, None) == b""
    assert header("v1", src, dst, None) == header_v1(src, dst)
    assert header("v2", src, dst, TLSDetails()) == header_v2(src, dst, TLSDetails())


def test_the_reader_refuses_a_broken_header() -> None:
    """The independent reader is strict (so a passing decode means something)."""
    with pytest.raises(ProxyHeaderError):
        parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n")
    with pytest.raises(ProxyHeaderError):
        parse(header_v2(("127.0.0.1", 1), ("127.0.0.1", 2))[:-1])


def test_readme_python_reader_reads_our_headers() -> None:
    """The Python backend example in the README works on what we send (v1, v2; v4, v6, unknown)."""
    import socket
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("  ```python\n  import socket, struct", 1)[1].split("  ```\n", 1)[0]
    code = "\n".join(line[2:] for line in ("  import socket, struct" + block).splitlines())
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # our own documentation
    read = namespace["read_proxy_header"]
    tls = TLSDetails(sni="api.example.com", cert_conn=True, verified=True, cn="payments.google.com")
    cases = [(("10.1.2.3", 4000), ("10.0.0.1", 443), "10.1.2.3", 4000),
             (("2001:db8::1", 4000, 0, 0), ("2001:db8::2", 443, 0, 0), "2001:db8::1", 4000),
             (None, None, None, None)]
    for version in ("v1", "v2"):
        for src, dst, ip, port in cases:
            left, right = socket.socketpair()
            with left, right:
                left.sendall(header(version, src, dst, tls) + b"GET /")  # type: ignore[arg-type]
                got_ip, got_port, tlvs = read(right)  # type: ignore[operator]
                assert (got_ip, got_port) == (ip, port)
                assert right.recv(16) == b"GET /"
                if version == "v2":
                    assert tlvs[0x02] == b"api.example.com"
