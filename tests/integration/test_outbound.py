"""Outbound with the real process: a legacy app's plain TCP carried to TLS servers on loopback
that stand in for Google (a test CA, good and broken certificates, old or odd servers)."""

from __future__ import annotations

import contextlib
import hashlib
import re
import select
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.backends import free_port
from tests.support.pki import CA, Pair, write_self_signed
from tests.support.proxy import ProxyProcess, run_cli
from tests.support.upstream import Seen, TLSServer, echo, read_all, server_context

GOOGLE = "vgw.googleapis.test"
# The six suites of the Card FOP rule (IANA order does not matter here), written literally.
SIX = {
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
}
SCSV = "TLS_EMPTY_RENEGOTIATION_INFO_SCSV"  # a signal (RFC 5746), not a suite
REQUEST = b"POST /v1/echo HTTP/1.1\r\nhost: vgw.googleapis.test\r\ncontent-length: 6\r\n\r\nsecret"


class PKI:
    def __init__(self, folder: Path, ca: CA) -> None:
        self.folder = folder
        self.ca = ca
        folder.mkdir(parents=True, exist_ok=True)
        self.cafile = folder / "ca.pem"
        self.cafile.write_bytes(ca.cert_pem)
        self.google: Pair = ca.write(folder, "google", [GOOGLE], "ecdsa")
        self.google_rsa: Pair = ca.write(folder, "google-rsa", [GOOGLE], "rsa")


@pytest.fixture
def pki(tmp_path: Path, ca: CA) -> PKI:
    return PKI(tmp_path / "pki", ca)


def outbound_config(server: TLSServer | str, pki: PKI, **entry: Any) -> dict[str, Any]:
    """An outbound-only config toward `server` (or a host:port), trusting the test CA."""
    item: dict[str, Any] = {
        "name": "google",
        "listen": f"127.0.0.1:{free_port()}",
        "connect": server if isinstance(server, str) else server.address,
        "server_name": GOOGLE,
        "trust": str(pki.cafile),
    }
    item.update(entry)
    return {
        "outbound": [item],
        "timeouts": {"handshake": 5, "connect": 2, "idle": 60, "drain": 10},
        "logging": {"level": "info"},
    }


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], ProxyProcess]]:
    running: list[ProxyProcess] = []

    def run(config: dict[str, Any]) -> ProxyProcess:
        proxy = ProxyProcess(tmp_path, config)
        running.append(proxy)
        return proxy

    yield run
    for proxy in running:
        proxy.stop()


def app_call(proxy: ProxyProcess, payload: bytes, *, timeout: float = 10.0) -> bytes:
    """What the legacy app does: plain TCP, send, half-close, read to the end."""
    with socket.create_connection((proxy.host, proxy.port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return b""
        received = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return bytes(received)


def test_offers_exactly_the_six_suites_with_sni_and_echoes(
    pki: PKI, start: Callable[[dict[str, Any]], ProxyProcess]
) -> None:
    """Seen from the server: TLS 1.2 only, the six suites and nothing else, SNI = server_name."""
    with TLSServer(server_context(str(pki.google.cert), str(pki.google.key)), echo) as server:
        proxy = start(outbound_config(server, pki))
        assert app_call(proxy, REQUEST) == REQUEST
        server.wait_finished(1)
        (seen,) = server.seen
    assert seen.hello is not None
    offered = [s for s in seen.hello.suites if s != SCSV]
    assert set(offered) == SIX
    assert len(offered) == 6
    assert seen.hello.sni == GOOGLE
    assert seen.hello.groups == ["x25519", "secp256r1", "secp384r1"]
    assert "TLSv1.3" not in seen.hello.versions
    assert seen.version == "TLSv1.2"
    assert seen.cipher in SIX
    log = proxy.log()
    assert re.search(r"direction=outbound outbound=google .* reason=done", log), log


def _refused_server(kind: str, pki: PKI, folder: Path) -> ssl.SSLContext:
    ca = pki.ca
    if kind == "other-name":
        pair = ca.write(folder, "other", ["other.example.test"])
    elif kind == "self-signed":
        pair = write_self_signed(folder, "self", [GOOGLE])
    elif kind == "expired":
        now = datetime.now(UTC)
        pair = ca.write(folder, "expired", [GOOGLE], not_before=now - timedelta(days=30),
                        not_after=now - timedelta(days=1))
    elif kind == "wildcard-two-labels":
        # *.googleapis.test covers vgw.googleapis.test; *.test would be a bare suffix, and
        # *.x.vgw.googleapis.test two labels too deep: this one is *.a.googleapis.test.
        pair = ca.write(folder, "wild", ["*.a.googleapis.test"])
    else:
        pair = pki.google
    settings: dict[str, Any] = {}
    if kind == "tls1.1-only":
        settings = {"maximum_version": ssl.TLSVersion.TLSv1_1,
                    "minimum_version": ssl.TLSVersion.TLSv1, "ciphers": "DEFAULT:@SECLEVEL=0"}
    elif kind == "aes256-only":
        settings = {"ciphers": "ECDHE-ECDSA-AES256-GCM-SHA384",
                    "maximum_version": ssl.TLSVersion.TLSv1_2}
    elif kind == "requires-client-cert":
        settings = {"cafile": pki.cafile}
    return server_context(str(pair.cert), str(pair.key), **settings)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("other-name", "hostname_mismatch"),
        ("wildcard-two-labels", "hostname_mismatch"),
        ("self-signed", "untrusted_certificate"),
        ("expired", "expired_certificate"),
        ("tls1.1-only", "protocol_version"),
        ("aes256-only", "no_shared_cipher"),
        ("requires-client-cert", "client_certificate_rejected"),
    ],
)
def test_refused_server_gets_nothing_of_the_request(
    kind: str, reason: str, pki: PKI, tmp_path: Path,
    start: Callable[[dict[str, Any]], ProxyProcess],
) -> None:
    """A server that fails a rule is refused with the right reason; no request byte reaches it."""
    with TLSServer(_refused_server(kind, pki, tmp_path / "bad"), read_all) as server:
        proxy = start(outbound_config(server, pki))
        answer = app_call(proxy, REQUEST)
        server.wait_finished(1)
        (seen,) = server.seen
    assert answer == b""
    assert bytes(seen.received) == b""
    assert seen.hello is not None
    assert seen.hello.sni == GOOGLE
    log = proxy.wait_for_log("connection closed")
    assert f"reason=outbound_error:{reason}" in log, log
    assert f"outbound google refused ({reason})" in log


def test_connect_refused_and_resolved_at_each_connection(
    pki: PKI, start: Callable[[dict[str, Any]], ProxyProcess]
) -> None:
    """Nothing listening: refused and counted; `localhost` resolves to ::1 and 127.0.0.1 in turn."""
    port = free_port()
    config = outbound_config(f"localhost:{port}", pki)
    proxy = start(config)
    assert app_call(proxy, REQUEST) == b""
    log = proxy.wait_for_log("reason=outbound_error:connect_refused")
    assert "outbound google refused (connect_refused)" in log
    # Now a server appears on that port (IPv4 only): the next connection finds it.
    ctx = server_context(str(pki.google.cert), str(pki.google.key))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(8)

    def serve() -> None:
        conn, _ = sock.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            echo(tls, Seen())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert app_call(proxy, b"ping") == b"ping"
    finally:
        thread.join(10)
        sock.close()


def _pattern(seed: bytes, size: int) -> bytes:
    block = hashlib.sha256(seed).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def test_16_mib_each_way_byte_exact(pki: PKI, start: Callable[[dict[str, Any]], ProxyProcess]) -> None:
    """16 MiB up while 16 MiB come down, both byte-exact, both ends closed cleanly."""
    size = 16 * 1024 * 1024
    up = _pattern(b"up", size)
    down = _pattern(b"down", size)
    got_up = hashlib.sha256()
    counts = {"up": 0}

    def handler(tls: ssl.SSLSocket, seen: Seen) -> None:
        # One thread drives both directions (an SSL object must not be used from two threads).
        tls.setblocking(False)
        view = memoryview(down)
        sent = 0
        finished = False
        deadline = time.monotonic() + 60
        while (not finished or sent < size) and time.monotonic() < deadline:
            readable, writable, _ = select.select([tls], [tls] if sent < size else [], [], 1)
            while readable or tls.pending():
                readable = []
                try:
                    data = tls.recv(262144)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                if not data:
                    finished = True
                    break
                got_up.update(data)
                counts["up"] += len(data)
            if writable:
                with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    sent += tls.send(view[sent : sent + 65536])
        tls.setblocking(True)
        tls.unwrap()

    with TLSServer(server_context(str(pki.google.cert), str(pki.google.key)), handler) as server:
        proxy = start(outbound_config(server, pki))
        received = hashlib.sha256()
        total = 0
        with socket.create_connection((proxy.host, proxy.port), timeout=60) as sock:
            def upload() -> None:
                sock.sendall(up)
                sock.shutdown(socket.SHUT_WR)

            uploader = threading.Thread(target=upload, daemon=True)
            started = time.monotonic()
            uploader.start()
            while True:
                chunk = sock.recv(262144)
                if not chunk:
                    break
                received.update(chunk)
                total += len(chunk)
            uploader.join(60)
            elapsed = time.monotonic() - started
        server.wait_finished(1, timeout=30)
    assert total == size
    assert received.digest() == hashlib.sha256(down).digest()
    assert counts["up"] == size
    assert got_up.digest() == hashlib.sha256(up).digest()
    log = proxy.wait_for_log("connection closed")
    assert f"bytes_to_server={size} bytes_to_app={size}" in log
    assert "reason=done" in log
    print(f"16 MiB each way through outbound in {elapsed:.2f}s")


def test_client_certificate_for_mutual_tls(
    pki: PKI, tmp_path: Path, start: Callable[[dict[str, Any]], ProxyProcess]
) -> None:
    """With client_certificate, a server that requires one accepts us and sees who we are."""
    client = pki.ca.write(tmp_path / "client", "client", ["partner.example.test"], "ecdsa")
    ctx = server_context(str(pki.google.cert), str(pki.google.key), cafile=pki.cafile)
    with TLSServer(ctx, echo) as server:
        proxy = start(outbound_config(
            server, pki, client_certificate={"cert": str(client.cert), "key": str(client.key)}
        ))
        assert app_call(proxy, REQUEST) == REQUEST
        server.wait_finished(1)
        (seen,) = server.seen
    assert seen.client_cert is not None
    assert "partner.example.test" in str(seen.client_cert["subject"])


@pytest.mark.parametrize("profile", ["card-fop", "card-fop-tls13"])
def test_sessions_are_resumed_per_outbound(
    profile: str, pki: PKI, start: Callable[[dict[str, Any]], ProxyProcess]
) -> None:
    """The next connection resumes the last one's session (fewer full handshakes); under TLS 1.3
    the ticket comes after the handshake and is kept when the call ends."""
    with TLSServer(server_context(str(pki.google.cert), str(pki.google.key)), echo) as server:
        proxy = start(outbound_config(server, pki, profile=profile))
        for index in range(3):
            assert app_call(proxy, b"call %d" % index) == b"call %d" % index
            server.wait_finished(index + 1)
        resumed = [seen.resumed for seen in server.seen]
    assert resumed == [False, True, True]
    assert proxy.log().count("resumed=yes") == 2


def test_half_close_answer_after_the_request_ends(
    pki: PKI, start: Callable[[dict[str, Any]], ProxyProcess]
) -> None:
    """The app's EOF reaches the server as close_notify; the answer it sends after still arrives."""

    def answer_after_eof(tls: ssl.SSLSocket, seen: Seen) -> None:
        read_all(tls, seen)
        tls.sendall(b"got %d bytes" % len(seen.received))
        tls.unwrap()

    with TLSServer(server_context(str(pki.google_rsa.cert), str(pki.google_rsa.key)),
                   answer_after_eof) as server:
        proxy = start(outbound_config(server, pki))
        assert app_call(proxy, REQUEST) == b"got %d bytes" % len(REQUEST)


def test_tls13_profile_offers_only_the_two_tls13_suites(
    pki: PKI, start: Callable[[dict[str, Any]], ProxyProcess]
) -> None:
    """card-fop-tls13: the six plus TLS_AES_128_GCM_SHA256 and TLS_CHACHA20_POLY1305_SHA256."""
    with TLSServer(server_context(str(pki.google.cert), str(pki.google.key)), echo) as server:
        proxy = start(outbound_config(server, pki, profile="card-fop-tls13"))
        assert app_call(proxy, REQUEST) == REQUEST
        server.wait_finished(1)
        (seen,) = server.seen
    assert seen.hello is not None
    offered = {s for s in seen.hello.suites if s != SCSV}
    assert offered == SIX | {"TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"}
    assert seen.hello.versions == ["TLSv1.3", "TLSv1.2"]
    assert seen.version == "TLSv1.3"


def test_sigterm_drains_an_open_outbound_call(
    pki: PKI, start: Callable[[dict[str, Any]], ProxyProcess]
) -> None:
    """SIGTERM: new connections refused, the call in flight finishes, exit 0."""
    release = threading.Event()

    def slow(tls: ssl.SSLSocket, seen: Seen) -> None:
        data = tls.recv(100)
        release.wait(10)
        tls.sendall(data)
        tls.unwrap()

    with TLSServer(server_context(str(pki.google.cert), str(pki.google.key)), slow) as server:
        proxy = start(outbound_config(server, pki))
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
            sock.sendall(b"in flight")
            time.sleep(0.3)
            proxy.signal(signal.SIGTERM)
            proxy.wait_for_log("draining 1 open connections")
            with pytest.raises(OSError):
                socket.create_connection((proxy.host, proxy.port), timeout=2).close()
            release.set()
            assert sock.recv(100) == b"in flight"
        assert proxy.proc.wait(10) == 0


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"trust": "missing.pem"}, "outbound[0].trust: cannot read"),
        ({"trust": "not-pem.txt"}, "outbound[0].trust: "),
        ({"listen": "0.0.0.0:{port}"}, "outbound[0].listen: 0.0.0.0:"),
        ({"conect": "x:1"}, "outbound[0].conect: unknown key"),
        ({"client_certificate": {"cert": "pki/google.pem", "key": "pki/google-rsa.key"}},
         "outbound[0].client_certificate: "),
    ],
    ids=["trust-missing", "trust-not-pem", "remote-listen", "unknown-key", "key-mismatch"],
)
def test_bad_outbound_entry_is_a_startup_error(
    entry: dict[str, Any], problem: str, pki: PKI, tmp_path: Path
) -> None:
    """Exit 2, one line naming outbound[i].key, before any port is opened."""
    (tmp_path / "not-pem.txt").write_text("hello\n")
    item: dict[str, Any] = {"listen": f"127.0.0.1:{free_port()}", "connect": f"{GOOGLE}:443",
                            "trust": "pki/ca.pem"}
    item.update({k: (v.format(port=free_port()) if isinstance(v, str) else v)
                 for k, v in entry.items()})
    config = tmp_path / "proxy.yaml"
    import yaml

    config.write_text(yaml.safe_dump({"outbound": [item]}))
    result = run_cli("-c", str(config))
    assert result.returncode == 2, result.stderr
    assert problem in result.stderr, result.stderr


def test_metrics_count_calls_refusals_and_expiries(
    pki: PKI, tmp_path: Path, start: Callable[[dict[str, Any]], ProxyProcess]
) -> None:
    """The issue's metric names, read with Prometheus' own parser and linted by promtool."""
    import shutil
    import subprocess

    from tests.integration.test_metrics import scrape, value

    client = pki.ca.write(tmp_path / "client", "client", ["partner.example.test"])
    wrong = pki.ca.write(tmp_path / "wrong", "wrong", ["other.example.test"])
    good_ctx = server_context(str(pki.google.cert), str(pki.google.key), cafile=pki.cafile)
    with TLSServer(good_ctx, echo) as good, \
            TLSServer(server_context(str(wrong.cert), str(wrong.key)), read_all) as bad:
        config = outbound_config(good, pki, client_certificate={"cert": str(client.cert),
                                                                "key": str(client.key)})
        other = dict(config["outbound"][0], name="other", listen=f"127.0.0.1:{free_port()}",
                     connect=bad.address)
        other.pop("client_certificate")
        config["outbound"].append(other)
        port = free_port()
        config["metrics"] = {"listen": f"127.0.0.1:{port}"}
        proxy = start(config)
        for _ in range(2):
            assert app_call(proxy, REQUEST) == REQUEST
        other_port = int(other["listen"].rpartition(":")[2])
        with socket.create_connection(("127.0.0.1", other_port), timeout=10) as sock:
            sock.sendall(REQUEST)
            assert sock.recv(10) == b""
        proxy.wait_for_log("reason=outbound_error:hostname_mismatch")
        body, samples = scrape(port)
    handshakes = [
        v for (name, labels), v in samples.items()
        if name == "fopproxy_outbound_tls_handshakes_total" and ("outbound", "google") in labels
    ]
    assert sum(handshakes) == 2
    assert value(samples, "fopproxy_outbound_tls_handshake_errors_total",
                 outbound="other", reason="hostname_mismatch") == 1
    assert value(samples, "fopproxy_outbound_tls_handshake_errors_total",
                 outbound="google", reason="connect_refused") == 0
    assert value(samples, "fopproxy_outbound_connections_active", outbound="google") == 0
    assert value(samples, "fopproxy_outbound_bytes_total", outbound="google",
                 direction="to_server") == 2 * len(REQUEST)
    assert value(samples, "fopproxy_outbound_bytes_total", outbound="google",
                 direction="to_app") == 2 * len(REQUEST)
    expected_not_after = int(pki.ca.issue([GOOGLE])[0].not_valid_after_utc.timestamp())  # ~90 days
    peer = value(samples, "fopproxy_outbound_peer_certificate_not_after_timestamp_seconds",
                 outbound="google")
    assert abs(peer - expected_not_after) < 600
    client_not_after = [
        v for (name, labels), v in samples.items()
        if name == "fopproxy_outbound_client_certificate_not_after_timestamp_seconds"
        and ("outbound", "google") in labels and ("serial", format(client.serial, "x")) in labels
    ]
    assert len(client_not_after) == 1
    assert value(samples, "fopproxy_outbound_tls_sessions_resumed_total", outbound="google") == 1
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                               text=True, timeout=30, check=False)
        assert check.returncode == 0, check.stdout + check.stderr


def test_trust_file_hot_reload_and_a_broken_one_keeps_the_old(
    pki: PKI, tmp_path: Path, start: Callable[[dict[str, Any]], ProxyProcess]
) -> None:
    """Google moves to a new CA: adding it to the trust file is picked up without a restart;
    a broken trust file is refused and the previous trust stays in use."""
    new_ca = CA("new CA")
    moved = new_ca.write(tmp_path / "moved", "google", [GOOGLE])
    trust = tmp_path / "trust.pem"
    trust.write_bytes(pki.ca.cert_pem)
    with TLSServer(server_context(str(moved.cert), str(moved.key)), echo) as server:
        proxy = start(outbound_config(server, pki, trust=str(trust)))
        assert app_call(proxy, b"before") == b""
        proxy.wait_for_log("reason=outbound_error:untrusted_certificate")
        trust.write_bytes(pki.ca.cert_pem + new_ca.cert_pem)
        proxy.signal(signal.SIGHUP)
        proxy.wait_for_log("outbound google: trust and client certificate reloaded")
        assert app_call(proxy, b"after") == b"after"
        trust.write_bytes(b"-----BEGIN CERTIFICATE-----\nbroken\n")
        proxy.signal(signal.SIGHUP)
        proxy.wait_for_log("outbound google: reload failed, still using the previous trust")
        assert app_call(proxy, b"still") == b"still"


def test_silent_server_hits_the_handshake_timeout(
    pki: PKI, start: Callable[[dict[str, Any]], ProxyProcess]
) -> None:
    """A server that accepts TCP and never answers: refused at outbound[i].timeouts.handshake."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        proxy = start(outbound_config(address, pki, timeouts={"handshake": 1}))
        started = time.monotonic()
        assert app_call(proxy, REQUEST) == b""
        elapsed = time.monotonic() - started
        proxy.wait_for_log("reason=outbound_error:timeout")
    finally:
        silent.close()
    assert 0.9 < elapsed < 4


def test_idle_outbound_connection_is_closed(
    pki: PKI, start: Callable[[dict[str, Any]], ProxyProcess]
) -> None:
    """No byte either way for outbound[i].timeouts.idle: both sides closed, reason idle_timeout."""
    with TLSServer(server_context(str(pki.google.cert), str(pki.google.key)), read_all) as server:
        proxy = start(outbound_config(server, pki, timeouts={"idle": 1}))
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
            sock.sendall(b"hello")
            started = time.monotonic()
            assert sock.recv(10) == b""
            elapsed = time.monotonic() - started
        server.wait_finished(1)
        assert bytes(server.seen[0].received) == b"hello"
    assert 0.9 < elapsed < 4
    proxy.wait_for_log("reason=idle_timeout")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_app_that_does_not_read_is_bounded_by_backpressure(
    pki: PKI, start: Callable[[dict[str, Any]], ProxyProcess]
) -> None:
    """The server offers 128 MiB while the app reads nothing: fopproxy stops reading the server
    (its memory stays flat), and the app still gets every byte once it reads."""
    size = 128 * 1024 * 1024
    block = _pattern(b"bp", 1024 * 1024)

    def flood(tls: ssl.SSLSocket, seen: Seen) -> None:
        seen.received += tls.recv(2)
        for _ in range(size // len(block)):
            tls.sendall(block)
        tls.unwrap()

    with TLSServer(server_context(str(pki.google.cert), str(pki.google.key)), flood) as server:
        proxy = start(outbound_config(server, pki))
        with socket.create_connection((proxy.host, proxy.port), timeout=60) as sock:
            sock.sendall(b"go")
            time.sleep(0.5)
            before = _rss_kib(proxy.pid)
            time.sleep(2)
            stalled = _rss_kib(proxy.pid)
            digest = hashlib.sha256()
            total = 0
            while total < size:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                digest.update(chunk)
                total += len(chunk)
        server.wait_finished(1, timeout=60)
    assert total == size
    assert digest.digest() == hashlib.sha256(block * (size // len(block))).digest()
    grew = stalled - before
    print(f"RSS while the app did not read: {before} -> {stalled} KiB")
    assert grew < 8 * 1024, f"fopproxy grew by {grew} KiB while the app did not read"


def test_workers_share_the_outbound_port_and_metrics_add_up(
    pki: PKI, start: Callable[[dict[str, Any]], ProxyProcess]
) -> None:
    """workers: 2: both bind the outbound port (SO_REUSEPORT); the supervisor sums their counts."""
    from tests.integration.test_metrics import scrape, value

    calls = 12
    with TLSServer(server_context(str(pki.google.cert), str(pki.google.key)), echo) as server:
        config = outbound_config(server, pki)
        port = free_port()
        config.update(workers=2, metrics={"listen": f"127.0.0.1:{port}"})
        proxy = start(config)
        for index in range(calls):
            assert app_call(proxy, b"call %d" % index) == b"call %d" % index
        _, samples = scrape(port)
    total = sum(
        v for (name, labels), v in samples.items()
        if name == "fopproxy_outbound_tls_handshakes_total" and ("outbound", "google") in labels
    )
    assert total == calls
    assert value(samples, "fopproxy_outbound_bytes_total", outbound="google",
                 direction="to_app") == sum(len(b"call %d" % i) for i in range(calls))


# An OpenSSL config that widens the system default groups and suites (tests/reliability/
# test_groups.py has the server side): the client must not take them.
WIDENING_CONF = """\
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_module
[ssl_module]
system_default = system_default_section
[system_default_section]
Groups = P-521:X448:ffdhe2048:X25519:P-256:P-384
CipherString = ALL:@SECLEVEL=0
"""


def test_openssl_conf_cannot_widen_what_the_client_offers(
    pki: PKI, tmp_path: Path
) -> None:
    """With a system OpenSSL config asking for P-521, X448, ffdhe and every suite, the
    ClientHello still carries exactly the six suites (+TLS 1.3 two) and the three groups."""
    conf = tmp_path / "widen.cnf"
    conf.write_text(WIDENING_CONF)
    with TLSServer(server_context(str(pki.google.cert), str(pki.google.key)), echo) as server:
        config = outbound_config(server, pki, profile="card-fop-tls13")
        proxy = ProxyProcess(tmp_path, config, env={"OPENSSL_CONF": str(conf)})
        try:
            assert app_call(proxy, REQUEST) == REQUEST
        finally:
            proxy.stop()
        server.wait_finished(1)
        (seen,) = server.seen
    assert seen.hello is not None
    assert seen.hello.groups == ["x25519", "secp256r1", "secp384r1"]
    assert {s for s in seen.hello.suites if s != SCSV} == SIX | {
        "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"
    }


def test_legacy_http_call_to_nginx_with_mutual_tls(
    pki: PKI, tmp_path: Path, start: Callable[[dict[str, Any]], ProxyProcess]
) -> None:
    """A real HTTPS server (nginx) requiring a client certificate: the app's plain HTTP request
    gets nginx's answer, and nginx saw our client certificate."""
    from tests.support.nginx import Nginx

    client = pki.ca.write(tmp_path / "client", "client", ["partner.example.test"])
    extra = (f"      ssl_client_certificate {pki.cafile};\n      ssl_verify_client on;\n"
             '      location /whoami { return 200 "$ssl_client_s_dn $ssl_protocol\\n"; }')
    nginx = Nginx(tmp_path / "nginx", [(pki.google.cert, pki.google.key)], server_name=GOOGLE,
                  extra=extra)
    try:
        proxy = start(outbound_config(nginx.address, pki, client_certificate={
            "cert": str(client.cert), "key": str(client.key)}))
        answer = app_call(proxy, b"GET /whoami HTTP/1.1\r\nHost: vgw.googleapis.test\r\n"
                                 b"Connection: close\r\n\r\n")
    finally:
        nginx.stop()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    assert answer.endswith(b"CN=partner.example.test TLSv1.2\n"), answer


def test_server_reset_mid_answer_resets_the_app(
    pki: PKI, start: Callable[[dict[str, Any]], ProxyProcess]
) -> None:
    """The server dies (RST) after 1 MiB of its answer: the app gets the 1 MiB, then a reset,
    never a clean end that would pass a cut answer for a whole one."""
    import struct

    def cut(tls: ssl.SSLSocket, seen: Seen) -> None:
        seen.received += tls.recv(100)
        tls.sendall(b"x" * (1 << 20))
        time.sleep(0.5)
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    with TLSServer(server_context(str(pki.google.cert), str(pki.google.key)), cut) as server:
        proxy = start(outbound_config(server, pki))
        received = bytearray()

        def read_to_the_end(sock: socket.socket) -> None:
            while chunk := sock.recv(65536):
                received.extend(chunk)

        with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
            sock.sendall(b"go")
            with pytest.raises(ConnectionResetError):
                read_to_the_end(sock)
    assert len(received) == 1 << 20
    proxy.wait_for_log("reason=server_reset")


def test_outbound_port_taken_is_a_clear_startup_error(pki: PKI, tmp_path: Path) -> None:
    """Exit 1, and the message names outbound[0].listen."""
    import yaml

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        config = tmp_path / "proxy.yaml"
        config.write_text(yaml.safe_dump({"outbound": [{
            "listen": f"127.0.0.1:{port}", "connect": f"{GOOGLE}:443", "trust": str(pki.cafile),
        }]}))
        result = run_cli("-c", str(config))
    finally:
        taken.close()
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on outbound[0].listen 127.0.0.1:{port}: Address already in use" in result.stderr
