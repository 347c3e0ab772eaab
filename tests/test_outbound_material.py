"""Outbound trust and client certificate: validated like served certificates, hot-reloaded with
keep-the-old-one-on-failure, counted in the same reload metrics."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fopproxy.config import OutboundConfig, parse_config
from fopproxy.errors import CertificateError, CertificateParseError, KeyMismatchError
from fopproxy.outbound.material import OutboundStore, build_outbound_tls, read_files
from fopproxy.stats import Stats
from tests.support.pki import CA


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _entry(folder: Path, *, client: bool = True) -> OutboundConfig:
    item: dict[str, object] = {"listen": "127.0.0.1:9443", "connect": "vgw.googleapis.test:443",
                               "trust": "trust.pem"}
    if client:
        item["client_certificate"] = {"cert": "client.pem", "key": "client.key"}
    return parse_config({"outbound": [item]}, folder).outbound[0]


@pytest.fixture
def folder(tmp_path: Path, ca: CA) -> Path:
    (tmp_path / "trust.pem").write_bytes(ca.cert_pem)
    pair = ca.write(tmp_path / "issued", "c0", ["partner.example.test"])
    (tmp_path / "client.pem").write_bytes(pair.cert_pem)
    (tmp_path / "client.key").write_bytes(pair.key_pem)
    return tmp_path


def test_mozilla_trust_is_the_certifi_bundle(tmp_path: Path) -> None:
    entry = parse_config({"outbound": [{"listen": "127.0.0.1:1", "connect": "a.test:443"}]},
                         tmp_path).outbound[0]
    built = build_outbound_tls(entry, read_files(entry))
    assert built.trust_count > 100  # Mozilla's program has well over a hundred roots
    assert built.client is None


@pytest.mark.parametrize(
    ("damage", "error", "text"),
    [
        (lambda f: (f / "trust.pem").write_bytes(b""), CertificateParseError, "outbound[0].trust: "),
        (lambda f: (f / "trust.pem").write_bytes(b"not pem\n"), CertificateParseError, "outbound[0].trust: "),
        (lambda f: (f / "client.key").unlink(), CertificateError, "outbound[0].client_certificate: cannot read"),
    ],
    ids=["empty-trust", "not-pem-trust", "missing-key"],
)
def test_unusable_files_are_start_errors_naming_the_key(folder: Path, damage: object, error: type, text: str) -> None:
    damage(folder)  # type: ignore[operator]
    with pytest.raises(error) as failure:
        OutboundStore(_entry(folder), Stats())
    assert str(failure.value).startswith(text)


def test_expired_or_weak_client_certificate_refused(folder: Path, ca: CA) -> None:
    now = datetime.now(UTC)
    old = ca.write(folder / "issued", "old", ["p.test"], not_before=now - timedelta(days=9),
                   not_after=now - timedelta(days=1))
    (folder / "client.pem").write_bytes(old.cert_pem)
    (folder / "client.key").write_bytes(old.key_pem)
    with pytest.raises(CertificateError, match=r"outbound\[0\]\.client_certificate: .* expired on"):
        OutboundStore(_entry(folder), Stats())
    weak = ca.write(folder / "issued", "weak", ["p.test"], "rsa", rsa_bits=1024)
    (folder / "client.pem").write_bytes(weak.cert_pem)
    (folder / "client.key").write_bytes(weak.key_pem)
    with pytest.raises(CertificateError, match="RSA key has 1024 bits"):
        OutboundStore(_entry(folder), Stats())


def test_rotation_is_picked_up_and_a_broken_one_keeps_the_old(folder: Path, ca: CA) -> None:
    stats = Stats()
    store = OutboundStore(_entry(folder), stats)
    first = store.current
    assert first.client is not None
    new = ca.write(folder / "issued", "c1", ["partner.example.test"])
    _replace(folder / "client.pem", new.cert_pem)
    _replace(folder / "client.key", new.key_pem)
    assert store.reload()
    assert store.current is not first
    assert store.current.client is not None
    assert store.current.client.serial_hex == format(new.serial, "x")
    assert stats.reloads["success"] == 1
    good = store.current
    _replace(folder / "trust.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n")  # cut short
    assert not store.reload(force=True)
    assert store.current is good
    assert stats.reloads["failure"] == 1


def test_half_written_pair_waits_for_the_grace(folder: Path, ca: CA) -> None:
    """Certificate first, key later (cert-manager's order): not a failure within the grace."""
    clock = Clock()
    stats = Stats()
    store = OutboundStore(_entry(folder), stats, grace=10, clock=clock)
    good = store.current
    new = ca.write(folder / "issued", "c2", ["partner.example.test"])
    _replace(folder / "client.pem", new.cert_pem)
    assert store.poll()  # changed: look again shortly
    assert not store.poll()  # same content, key mismatch: in grace
    assert stats.reloads["failure"] == 0
    assert store.current is good
    clock.now += 11
    store.poll()
    assert stats.reloads["failure"] == 1
    _replace(folder / "client.key", new.key_pem)
    store.poll()
    store.poll()
    assert store.current is not good
    assert stats.reloads["success"] == 1


def test_key_mismatch_at_start(folder: Path, ca: CA) -> None:
    other = ca.write(folder / "issued", "o", ["x.test"])
    (folder / "client.key").write_bytes(other.key_pem)
    with pytest.raises(KeyMismatchError):
        OutboundStore(_entry(folder), Stats())


def test_a_reload_drops_the_cached_session(folder: Path) -> None:
    """Sessions belong to a context: a new build starts without one."""
    store = OutboundStore(_entry(folder, client=False), Stats())
    store.current.session = object()  # type: ignore[assignment]
    _replace(folder / "trust.pem", (folder / "trust.pem").read_bytes() + b"\n")
    assert store.reload()
    assert store.current.session is None


def test_a_fifo_as_trust_file_is_refused_without_blocking(folder: Path) -> None:
    """The reloader's non-blocking read: a FIFO (nobody writing) is refused, not waited on."""
    (folder / "trust.pem").unlink()
    os.mkfifo(folder / "trust.pem")
    with pytest.raises(CertificateError, match=r"outbound\[0\]\.trust: cannot read .*FIFO"):
        OutboundStore(_entry(folder), Stats())
