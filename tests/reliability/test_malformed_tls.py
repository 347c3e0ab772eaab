"""Malformed TLS after (or during) the handshake: the right alert, a close, nothing unauthenticated
reaches the backend, and other connections are untouched.

The alerts asserted are what OpenSSL (3.x) actually sends; docs/RELIABILITY.md lists them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import Callable

import pytest

from tests.conftest import SERVER_NAME, TLSFiles
from tests.reliability.conftest import StartProxy
from tests.reliability.support import (
    AsyncBackend,
    Canary,
    MemoryClient,
    Recorder,
    client_hello,
    closed_within,
    plaintext_alert,
    wait_until,
)
from tests.support.proxy import ProxyProcess, client_context

FAST = {"handshake": 2, "connect": 2, "idle": 60, "drain": 5}
# OpenSSL's SSL_OP_NO_ENCRYPT_THEN_MAC: without EtM, CBC records are MAC-then-encrypt, so a
# flipped byte in the last-but-one block lands exactly on the padding-length byte.
OP_NO_ENCRYPT_THEN_MAC = 0x80000
GOOD = b"good-prefix"


def _flip_ciphertext(record: bytearray) -> None:
    record[5 + 8 + 2] ^= 0x01  # after the header and the GCM explicit nonce / CBC IV start


def _flip_tag(record: bytearray) -> None:
    record[-1] ^= 0x80  # last byte: the AEAD tag, or the last CBC block


def _flip_padding(record: bytearray) -> None:
    record[-17] ^= 0x01  # last byte of the last-but-one CBC block -> padding length after CBC


def _oversized(record: bytearray) -> None:
    # TLS 1.2 caps a ciphertext record at 2^14 + 2048 bytes (RFC 5246 6.2.3).
    record[:] = b"\x17\x03\x03" + struct.pack("!H", 18433) + os.urandom(18433)


CASES = [
    ("gcm-ciphertext-bit", "ECDHE-ECDSA-AES128-GCM-SHA256", 0, _flip_ciphertext, "SSLV3_ALERT_BAD_RECORD_MAC"),
    ("gcm-tag-bit", "ECDHE-RSA-AES128-GCM-SHA256", 0, _flip_tag, "SSLV3_ALERT_BAD_RECORD_MAC"),
    ("chacha-ciphertext-bit", "ECDHE-ECDSA-CHACHA20-POLY1305", 0, _flip_ciphertext, "SSLV3_ALERT_BAD_RECORD_MAC"),
    ("cbc-etm-mac-bit", "ECDHE-ECDSA-AES128-SHA256", 0, _flip_tag, "SSLV3_ALERT_BAD_RECORD_MAC"),
    ("cbc-bad-padding", "ECDHE-ECDSA-AES128-SHA256", OP_NO_ENCRYPT_THEN_MAC, _flip_padding, "SSLV3_ALERT_BAD_RECORD_MAC"),
    ("cbc-mac-then-encrypt-bit", "ECDHE-RSA-AES128-SHA256", OP_NO_ENCRYPT_THEN_MAC, _flip_tag, "SSLV3_ALERT_BAD_RECORD_MAC"),
    ("record-over-size-limit", "ECDHE-ECDSA-AES128-GCM-SHA256", 0, _oversized, "TLSV1_ALERT_RECORD_OVERFLOW"),
]


@pytest.fixture
def recorded(start_proxy: StartProxy, tls_files: TLSFiles):  # type: ignore[no-untyped-def]
    """A proxy in front of a recording backend, plus a canary through a second proxy-backend pair."""
    recorder = Recorder()
    with AsyncBackend(recorder) as backend:
        yield start_proxy(backend.address, timeouts=FAST), recorder


@pytest.mark.parametrize(("name", "suite", "options", "tamper", "alert"), CASES, ids=[c[0] for c in CASES])
def test_tampered_record_gets_alert_and_never_reaches_backend(recorded, tls_files: TLSFiles, name: str, suite: str, options: int, tamper: Callable[[bytearray], None], alert: str) -> None:
    """A good record passes; the tampered one after it is answered with the alert, and dropped."""
    proxy, recorder = recorded
    ctx = client_context(tls_files.cafile, ciphers=suite, maximum_version=ssl.TLSVersion.TLSv1_2)
    ctx.options |= options
    bystander = MemoryClient(proxy.host, proxy.port, ctx)
    bystander.handshake()
    bystander.raw.sendall(bystander.record(b"bystander"))
    client = MemoryClient(proxy.host, proxy.port, ctx)
    client.handshake()
    assert client.tls.cipher()[0] == suite
    client.raw.sendall(client.record(GOOD))
    assert wait_until(lambda: len(recorder.received) == 2 and bytes(recorder.received[1]) == GOOD, 5)
    bad = bytearray(client.record(b"must-not-arrive " * 64))
    tamper(bad)
    client.raw.sendall(bytes(bad))
    plain, error, seconds = client.read_until_close(5)
    print(f"{name} ({suite}): {type(error).__name__} {getattr(error, 'reason', error)} after {seconds:.4f}s")
    assert plain == b""
    assert isinstance(error, ssl.SSLError) and error.reason == alert
    assert client.raw.recv(100) == b"", "the proxy must close after the alert"
    client.close()
    proxy.wait_for_log("reason=tls_error:")
    # The backend side of that connection ended: whatever the proxy sent it has arrived.
    assert recorder.eof.wait(5), "the proxy kept the backend connection open"
    assert bytes(recorder.received[1]) == GOOD, "bytes of a failed record reached the backend"
    # The other connection on the same proxy is untouched.
    bystander.raw.sendall(bystander.record(b" still fine"))
    assert wait_until(lambda: bytes(recorder.received[0]) == b"bystander still fine", 5)
    bystander.close()


HANDSHAKE_CASES = [
    # ClientKeyExchange before any ClientHello.
    ("key-exchange-first", lambda ctx: b"\x16\x03\x03\x00\x25\x10\x00\x00\x21\x20" + os.urandom(32), 10),
    # Finished before any ClientHello.
    ("finished-first", lambda ctx: b"\x16\x03\x03\x00\x10\x14\x00\x00\x0c" + os.urandom(12), 10),
    # ChangeCipherSpec as the very first record.
    ("ccs-first", lambda ctx: b"\x14\x03\x03\x00\x01\x01", 10),
    # A plaintext record over 2^14 + 2048 bytes.
    ("oversized-record", lambda ctx: b"\x16\x03\x03" + struct.pack("!H", 18500) + os.urandom(18500), 22),
]


@pytest.mark.parametrize(("name", "make", "alert"), HANDSHAKE_CASES, ids=[c[0] for c in HANDSHAKE_CASES])
def test_out_of_order_handshake_gets_alert(start_proxy: StartProxy, echo_server: AsyncBackend, canary_for, ctx: ssl.SSLContext, name: str, make, alert: int) -> None:
    """Handshake messages in the wrong order: unexpected_message (10); a huge record: record_overflow (22)."""
    proxy = start_proxy(echo_server.address, timeouts=FAST)
    canary = canary_for(proxy)
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(make(ctx))
        closed, seen, seconds = closed_within(sock, 5)
    print(f"{name}: alert {plaintext_alert(seen)} after {seconds:.4f}s")
    assert closed and seconds < 1.5
    assert plaintext_alert(seen) == (2, alert)
    proxy.wait_for_log("reason=handshake_error:")
    canary.check()
    assert echo_server.connections == 1


def test_early_change_cipher_spec(start_proxy: StartProxy, echo_server: AsyncBackend, canary_for, ctx: ssl.SSLContext) -> None:
    """ChangeCipherSpec right after the server's first flight (no key exchange yet): alert 10."""
    proxy = start_proxy(echo_server.address, timeouts=FAST)
    canary = canary_for(proxy)
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(client_hello(ctx))
        flight = b""
        while b"\x0e\x00\x00\x00" not in flight:  # ServerHelloDone
            chunk = sock.recv(65536)
            assert chunk
            flight += chunk
        sock.sendall(b"\x14\x03\x03\x00\x01\x01")
        closed, seen, seconds = closed_within(sock, 5)
    print(f"early CCS: alert {plaintext_alert(seen)} after {seconds:.4f}s")
    assert closed
    assert plaintext_alert(seen) == (2, 10)
    proxy.wait_for_log("reason=handshake_error:other")
    canary.check()
    assert echo_server.connections == 1


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command line tool")
def test_client_renegotiation_is_refused(start_proxy: StartProxy, tls_files: TLSFiles) -> None:
    """`openssl s_client -tls1_2` sends 'R': warning no_renegotiation (100), then the client aborts."""
    recorder = Recorder()
    with AsyncBackend(recorder) as backend:
        proxy = start_proxy(backend.address, timeouts=FAST)
        ctx = client_context(tls_files.cafile)
        canary = MemoryClient(proxy.host, proxy.port, ctx)
        canary.handshake()
        result = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{proxy.port}", "-tls1_2", "-servername", SERVER_NAME,
             "-CAfile", str(tls_files.cafile), "-msg"],
            input="R\n", capture_output=True, text=True, timeout=20,
        )
        output = result.stdout + result.stderr
        received = [line.strip() for line in output.splitlines() if "Alert" in line]
        print("renegotiation:", received)
        assert "RENEGOTIATING" in output
        assert "<<< TLS 1.2, Alert [length 0002], warning no_renegotiation" in output
        log = proxy.wait_for_log("reason=tls_error:")
        assert "reason=tls_error:sslv3_alert_handshake_failure" in log
        canary.raw.sendall(canary.record(b"unaffected"))
        assert wait_until(lambda: any(bytes(r) == b"unaffected" for r in recorder.received), 5)
        # The renegotiating connection got no bytes through (its "R\n" is s_client's command).
        assert all(bytes(r) in (b"", b"unaffected") for r in recorder.received)
        canary.close()


def test_canary_survives_a_malformed_barrage(start_proxy: StartProxy, echo_server: AsyncBackend, tls_files: TLSFiles, ctx: ssl.SSLContext) -> None:
    """20 rounds of every tampering above while one good connection keeps echoing byte-exact."""
    proxy: ProxyProcess = start_proxy(echo_server.address, timeouts=FAST)
    canary = Canary(proxy.host, proxy.port, ctx)
    for _ in range(20):
        for _, suite, options, tamper, _ in CASES:
            tctx = client_context(tls_files.cafile, ciphers=suite, maximum_version=ssl.TLSVersion.TLSv1_2)
            tctx.options |= options
            client = MemoryClient(proxy.host, proxy.port, tctx)
            with contextlib.suppress(OSError):
                client.handshake()
                bad = bytearray(client.record(b"x" * 300))
                tamper(bad)
                client.raw.sendall(bytes(bad))
                client.read_until_close(5)
            client.close()
        canary.check(16 * 1024)
    log = proxy.wait_for_log("reason=tls_error:", count=20 * len(CASES))
    print(f"barrage: {log.count('reason=tls_error:')} tls_error closes, canary checks {canary.checks}")
    canary.close()
