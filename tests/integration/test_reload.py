"""Certificate rotation under traffic against the real process: no failed handshake, ever.

A client thread makes new TLS connections in a loop and records the serial each one was served;
another keeps one connection streaming through the echo backend. Meanwhile the certificate files
are rotated a dozen ways: plain replace, a two-step write, a slow write, the Kubernetes `..data`
symlink swap, RSA <-> ECDSA, and three bad rotations (broken PEM, a key that does not match, an
expired certificate) that must be refused with the old certificate still served.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.conftest import SERVER_NAME
from tests.support.backends import ThreadedBackend, free_port
from tests.support.pki import CA, Pair
from tests.support.proxy import ProxyProcess, client_context, tls_connect

INTERVAL = 1.0  # tls.reload_interval in these tests
GRACE = 3.0  # tls.reload_grace: longer than the gaps of the two-step writes below
SWITCH_BOUND = INTERVAL + 1.0  # the promise: new connections get the new certificate by then
CONSECUTIVE = 12  # new connections in a row that must all see the new serial (both workers)
BROKEN_PEM = b"-----BEGIN CERTIFICATE-----\nTUlJQm9yZ2Vu\n-----END CERTIFICATE-----\n"


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass(frozen=True)
class Handshake:
    started: float
    serial: int


class HandshakeLoop(threading.Thread):
    """New TLS connections back to back (bounded in count and time), recording every outcome."""

    def __init__(self, port: int, ctx: ssl.SSLContext, *, max_seconds: float = 300, max_count: int = 40000) -> None:
        super().__init__(daemon=True)
        self.port, self.ctx = port, ctx
        self.max_seconds, self.max_count = max_seconds, max_count
        self.done: list[Handshake] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self.stop.is_set() and time.monotonic() < deadline and len(self.done) < self.max_count:
            started = time.monotonic()
            try:
                with tls_connect("127.0.0.1", self.port, self.ctx, SERVER_NAME) as sock:
                    der = sock.getpeercert(binary_form=True)
                assert der is not None
                self.done.append(Handshake(started, x509.load_der_x509_certificate(der).serial_number))
            except OSError as exc:  # ssl.SSLError included
                self.failures.append(f"{started:.3f}: {exc!r}")
            self.stop.wait(0.005)

    def since(self, moment: float) -> list[Handshake]:
        return [h for h in list(self.done) if h.started >= moment]

    def consecutive(self, serial: int, moment: float, count: int) -> bool:
        """The last `count` connections made after `moment` all saw `serial`."""
        recent = self.since(moment)[-count:]
        return len(recent) == count and all(h.serial == serial for h in recent)


class Streamer(threading.Thread):
    """One long-lived connection through the echo backend, every byte checked on the way back."""

    def __init__(self, port: int, ctx: ssl.SSLContext, *, max_seconds: float = 300) -> None:
        super().__init__(daemon=True)
        self.port, self.ctx, self.max_seconds = port, ctx, max_seconds
        self.echoed = 0
        self.errors: list[str] = []
        self.serial = 0
        self.connected = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        rng = random.Random(20261129)
        deadline = time.monotonic() + self.max_seconds
        try:
            with tls_connect("127.0.0.1", self.port, self.ctx, SERVER_NAME, timeout=30) as sock:
                der = sock.getpeercert(binary_form=True)
                assert der is not None
                self.serial = x509.load_der_x509_certificate(der).serial_number
                self.connected.set()
                while not self.stop.is_set() and time.monotonic() < deadline:
                    chunk = rng.randbytes(rng.randint(1, 64 * 1024))
                    sock.sendall(chunk)
                    received = bytearray()
                    while len(received) < len(chunk):
                        data = sock.recv(len(chunk) - len(received))
                        if not data:
                            raise ConnectionError(f"closed after {self.echoed} bytes")
                        received += data
                    if received != chunk:
                        raise AssertionError(f"echo differs after {self.echoed} bytes")
                    self.echoed += len(chunk)
                    self.stop.wait(0.02)
        except (OSError, AssertionError) as exc:
            self.errors.append(repr(exc))
        finally:
            self.connected.set()


class Volume:
    """`secret/tls.crt` + `secret/tls.key`: first plain files, later a Kubernetes Secret volume."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()
        self.cert = folder / "tls.crt"
        self.key = folder / "tls.key"
        self.generation = 0

    def plain_replace(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Write beside, rename over: each file changes atomically (cert first, then key)."""
        for path, data in ((self.cert, cert_pem), (self.key, key_pem)):
            tmp = path.with_name(path.name + ".new")
            tmp.write_bytes(data)
            os.replace(tmp, path)

    def two_step(self, cert_pem: bytes, key_pem: bytes, gap: float) -> None:
        """Certificate now, key `gap` seconds later, each rewritten in place."""
        self.cert.write_bytes(cert_pem)
        time.sleep(gap)
        self.key.write_bytes(key_pem)

    def slow_write(self, cert_pem: bytes, key_pem: bytes, gap: float) -> None:
        """Key first, then the certificate written in two halves `gap` seconds apart."""
        self.key.write_bytes(key_pem)
        with self.cert.open("wb") as out:
            out.write(cert_pem[: len(cert_pem) // 2])
            out.flush()
            time.sleep(gap)
            out.write(cert_pem[len(cert_pem) // 2 :])

    def _new_data_dir(self, cert_pem: bytes, key_pem: bytes) -> str:
        self.generation += 1
        name = f"..2026_11_29_13_00_{self.generation:02d}.{4000 + self.generation}"
        (self.folder / name).mkdir()
        (self.folder / name / "tls.crt").write_bytes(cert_pem)
        (self.folder / name / "tls.key").write_bytes(key_pem)
        return name

    def to_kubernetes(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Become a Secret volume: `tls.crt -> ..data/tls.crt`, `..data -> ..<timestamp>`."""
        (self.folder / "..data").symlink_to(self._new_data_dir(cert_pem, key_pem))
        for name in ("tls.crt", "tls.key"):
            link = self.folder / f"{name}.link"
            link.symlink_to(f"..data/{name}")
            os.replace(link, self.folder / name)

    def kubernetes_swap(self, cert_pem: bytes, key_pem: bytes) -> None:
        """What the kubelet does on a Secret update: new folder, atomic `..data` rename, cleanup."""
        old = os.readlink(self.folder / "..data")
        tmp = self.folder / "..data_tmp"
        tmp.symlink_to(self._new_data_dir(cert_pem, key_pem))
        os.replace(tmp, self.folder / "..data")
        shutil.rmtree(self.folder / old)


@dataclass
class Rotation:
    name: str
    apply: Callable[[], None]
    serial: int | None  # the serial to serve afterwards; None: a bad rotation
    reason: str = ""  # for a bad one: what the log must say
    started: float = 0.0
    done: float = 0.0
    observed: dict[str, Any] = field(default_factory=dict)


class Pki:
    """Every pair a rotation needs, made before the proxy starts so rotations are quick."""

    def __init__(self, ca: CA, folder: Path) -> None:
        self.ca, self.folder, self.count = ca, folder, 0

    def pair(self, key_type: str, **kwargs: Any) -> Pair:
        self.count += 1
        return self.ca.write(self.folder, f"p{self.count}", [SERVER_NAME], key_type, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def echo() -> Iterator[ThreadedBackend]:
    def echo_handler(conn: socket.socket) -> None:
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)

    with ThreadedBackend(echo_handler) as backend:
        yield backend


def _config(volume: Volume, backend: ThreadedBackend, workers: int, interval: float) -> dict[str, Any]:
    return {
        "listen": f"127.0.0.1:{free_port()}",
        "backend": backend.address,
        "server_name": SERVER_NAME,
        "workers": workers,
        "tls": {
            "certificates": [{"cert": str(volume.cert), "key": str(volume.key)}],
            "reload_interval": interval,
            "reload_grace": GRACE,
        },
        "timeouts": {"handshake": 10, "connect": 5, "idle": 120, "drain": 10},
        # One line per connection would be thousands of lines; reload lines are what we read.
        "logging": {"level": "info", "connections": False},
    }


def _serial_hex(serial: int) -> str:
    return f"serial={serial:x} "


def _rotate(rotation: Rotation, loop: HandshakeLoop, proxy: ProxyProcess, workers: int, failures_before: int) -> None:
    """Apply one rotation and wait (bounded) until every worker has acted on it."""
    rotation.started = time.monotonic()
    rotation.apply()
    done = rotation.done = time.monotonic()
    new = rotation.serial
    if new is not None:
        wait_until(lambda: loop.consecutive(new, done, CONSECUTIVE), 30, f"{rotation.name}: {CONSECUTIVE} new connections with the new serial")
        wait_until(lambda: proxy.log().count(_serial_hex(new)) >= workers, 15, f"{rotation.name}: every worker's reload line")
    else:
        expected = failures_before + workers
        wait_until(lambda: proxy.log().count("certificate reload failed") >= expected, GRACE + 15, f"{rotation.name}: the failure in the log")
    # Keep traffic going past the promised bound, so the final check has handshakes there.
    wait_until(lambda: bool(loop.since(done + SWITCH_BOUND + 0.5)), 30, "handshakes after the bound")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_rotations_under_traffic_never_fail_a_handshake(tmp_path: Path, ca: CA, echo: ThreadedBackend, workers: int) -> None:
    """Twelve rotations under a steady stream of handshakes: zero failures, right serial each time."""
    pki = Pki(ca, tmp_path / "issued")
    cafile = tmp_path / "ca.pem"
    cafile.write_bytes(ca.cert_pem)
    volume = Volume(tmp_path / "secret")
    initial = pki.pair("rsa")
    volume.plain_replace(initial.cert_pem, initial.key_pem)
    past = datetime.now(UTC) - timedelta(days=1)
    p = {name: pki.pair(kind) for name, kind in [
        ("replace", "rsa"), ("two_step", "ecdsa"), ("slow", "rsa"), ("k8s", "ecdsa"),
        ("k8s_rsa", "rsa"), ("after_broken", "ecdsa"), ("mismatch", "ecdsa"), ("after_mismatch", "rsa"),
        ("after_expired", "ecdsa"), ("plain_again", "rsa"),
    ]}
    expired = pki.pair("ecdsa", not_before=past - timedelta(days=90), not_after=past)
    rotations = [
        Rotation("plain replace, RSA", lambda: volume.plain_replace(p["replace"].cert_pem, p["replace"].key_pem), p["replace"].serial),
        Rotation("cert, key 1.5 s later; RSA -> ECDSA", lambda: volume.two_step(p["two_step"].cert_pem, p["two_step"].key_pem, 1.5), p["two_step"].serial),
        Rotation("slow write; ECDSA -> RSA", lambda: volume.slow_write(p["slow"].cert_pem, p["slow"].key_pem, 1.2), p["slow"].serial),
        Rotation("become a Kubernetes Secret volume", lambda: volume.to_kubernetes(p["k8s"].cert_pem, p["k8s"].key_pem), p["k8s"].serial),
        Rotation("..data swap; ECDSA -> RSA", lambda: volume.kubernetes_swap(p["k8s_rsa"].cert_pem, p["k8s_rsa"].key_pem), p["k8s_rsa"].serial),
        Rotation("..data swap: broken PEM", lambda: volume.kubernetes_swap(BROKEN_PEM, p["after_broken"].key_pem), None, "no complete PEM certificate"),
        Rotation("..data swap; RSA -> ECDSA", lambda: volume.kubernetes_swap(p["after_broken"].cert_pem, p["after_broken"].key_pem), p["after_broken"].serial),
        Rotation("..data swap: key does not match", lambda: volume.kubernetes_swap(p["mismatch"].cert_pem, p["after_mismatch"].key_pem), None, "does not match certificate"),
        Rotation("..data swap; ECDSA -> RSA", lambda: volume.kubernetes_swap(p["after_mismatch"].cert_pem, p["after_mismatch"].key_pem), p["after_mismatch"].serial),
        Rotation("..data swap: expired", lambda: volume.kubernetes_swap(expired.cert_pem, expired.key_pem), None, "expired on"),
        Rotation("..data swap; RSA -> ECDSA", lambda: volume.kubernetes_swap(p["after_expired"].cert_pem, p["after_expired"].key_pem), p["after_expired"].serial),
        Rotation("plain files over the symlinks", lambda: volume.plain_replace(p["plain_again"].cert_pem, p["plain_again"].key_pem), p["plain_again"].serial),
    ]

    ctx = client_context(cafile)
    with ProxyProcess(tmp_path, _config(volume, echo, workers, INTERVAL)) as proxy:
        loop = HandshakeLoop(proxy.port, ctx)
        streamer = Streamer(proxy.port, ctx)
        streamer.start()
        assert streamer.connected.wait(30) and not streamer.errors, streamer.errors
        loop.start()
        try:
            wait_until(lambda: loop.consecutive(initial.serial, 0, CONSECUTIVE), 30, "the first handshakes")
            for number, rotation in enumerate(rotations):
                _rotate(rotation, loop, proxy, workers, failures_before=workers * sum(r.serial is None for r in rotations[:number]))
            loop.stop.set()
            streamer.stop.set()
            loop.join(30)
            streamer.join(30)
        finally:
            loop.stop.set()
            streamer.stop.set()
        log = proxy.log()
        assert proxy.stop() == 0, log

    assert loop.failures == [], loop.failures[:5]
    assert streamer.errors == [], streamer.errors
    assert streamer.serial == initial.serial  # the long-lived connection kept its certificate
    assert streamer.echoed > 1_000_000
    handshakes = loop.done
    previous = initial.serial
    switch_times: list[float] = []  # per good rotation: the last old-serial handshake after it
    for index, rotation in enumerate(rotations):
        until = rotations[index + 1].started if index + 1 < len(rotations) else float("inf")
        window = [h for h in handshakes if rotation.started <= h.started < until]
        if rotation.serial is None:
            assert window and {h.serial for h in window} == {previous}, rotation.name
            reason_lines = [line for line in log.splitlines() if "certificate reload failed" in line and rotation.reason in line]
            assert len(reason_lines) == workers, (rotation.name, log)
            continue
        stale = [h.started - rotation.done for h in window if h.serial == previous and h.started >= rotation.done]
        switch_times.append(max(stale, default=0.0))
        late = [h for h in window if h.started >= rotation.done + SWITCH_BOUND]
        assert late, rotation.name
        assert {h.serial for h in late} == {rotation.serial}, f"{rotation.name}: old certificate after {SWITCH_BOUND}s"
        assert {h.serial for h in window} <= {previous, rotation.serial}, rotation.name
        previous = rotation.serial
    # Exactly the three bad rotations were counted as failures (per worker), none of the two-step writes.
    assert log.count("certificate reload failed") == 3 * workers, log
    assert log.count("certificates reloaded") == 9 * workers, log
    print(f"\nworkers={workers}: {len(handshakes)} handshakes, 0 failed, {streamer.echoed} bytes echoed on one connection, "
          f"old certificate last seen {max(switch_times):.2f}s after a rotation (bound {SWITCH_BOUND}s)")


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_now(tmp_path: Path, ca: CA, echo: ThreadedBackend, workers: int) -> None:
    """With polling an hour apart, only SIGHUP (forwarded by the supervisor) loads new files."""
    pki = Pki(ca, tmp_path / "issued")
    cafile = tmp_path / "ca.pem"
    cafile.write_bytes(ca.cert_pem)
    volume = Volume(tmp_path / "secret")
    first, second, other = pki.pair("ecdsa"), pki.pair("rsa"), pki.pair("ecdsa")
    volume.plain_replace(first.cert_pem, first.key_pem)
    ctx = client_context(cafile)

    def served(count: int) -> set[int]:
        serials = set()
        for _ in range(count):
            with tls_connect("127.0.0.1", proxy.port, ctx, SERVER_NAME) as sock:
                der = sock.getpeercert(binary_form=True)
                assert der is not None
                serials.add(x509.load_der_x509_certificate(der).serial_number)
        return serials

    with ProxyProcess(tmp_path, _config(volume, echo, workers, 3600)) as proxy:
        volume.plain_replace(second.cert_pem, second.key_pem)
        time.sleep(1.5)
        assert served(CONSECUTIVE) == {first.serial}  # no signal, no reload
        proxy.signal(signal.SIGHUP)
        proxy.wait_for_log(_serial_hex(second.serial), count=workers)
        assert served(CONSECUTIVE) == {second.serial}
        assert proxy.log().count("SIGHUP: reloading certificates") == workers

        # A half-written pair on SIGHUP: the operator asked, so it fails now (no grace), old serves.
        volume.cert.write_bytes(other.cert_pem)
        proxy.signal(signal.SIGHUP)
        log = proxy.wait_for_log("certificate reload failed", count=workers)
        assert "does not match certificate" in log
        assert served(CONSECUTIVE) == {second.serial}
        volume.key.write_bytes(other.key_pem)
        proxy.signal(signal.SIGHUP)
        proxy.wait_for_log(_serial_hex(other.serial), count=workers)
        assert served(CONSECUTIVE) == {other.serial}
        assert proxy.stop() == 0
