"""CertificateStore: what a rotation looks like on disk, and what the store serves and counts."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fopproxy.certs import CertificateSource
from fopproxy.errors import CertificateParseError
from fopproxy.policy import DEFAULT_PROFILE, PROFILES, select_suites
from fopproxy.reload import CertificateStore, settle_delay, watch
from fopproxy.stats import Stats
from tests.support.pki import CA, Pair

HOST = "api.example.test"
ALL = select_suites(PROFILES[DEFAULT_PROFILE], ())
GRACE = 10.0


class Clock:
    """A monotonic clock the test moves by hand, so grace periods take no real time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _replace(path: Path, data: bytes) -> None:
    """Write like a careful operator: a temporary file renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Files:
    """One certificate entry at `live/tls.crt` + `live/tls.key`, and a CA to issue new pairs."""

    def __init__(self, folder: Path, ca: CA) -> None:
        self.ca = ca
        self.issued = folder / "issued"
        self.live = folder / "live"
        self.live.mkdir(parents=True)
        self.cert = self.live / "tls.crt"
        self.key = self.live / "tls.key"
        self.count = 0

    def issue(self, key_type: str = "ecdsa", **kwargs: object) -> Pair:
        self.count += 1
        return self.ca.write(self.issued, f"p{self.count}", [HOST], key_type, **kwargs)  # type: ignore[arg-type]

    def install(self, pair: Pair) -> None:
        _replace(self.cert, pair.cert_pem)
        _replace(self.key, pair.key_pem)

    @property
    def sources(self) -> list[CertificateSource]:
        return [CertificateSource(self.cert, self.key)]


@pytest.fixture
def files(tmp_path: Path, ca: CA) -> Files:
    return Files(tmp_path, ca)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _store(files: Files, clock: Clock, first: Pair) -> CertificateStore:
    files.install(first)
    return CertificateStore(files.sources, HOST, ALL, Stats(), grace=GRACE, clock=clock)


def _serial(store: CertificateStore) -> int:
    return store.current.certificates[0].leaf.serial_number


def _counts(store: CertificateStore) -> tuple[int, int]:
    """(successful, failed) reloads."""
    return store.stats.reloads["success"], store.stats.reloads["failure"]


def _poll_until_settled(store: CertificateStore) -> None:
    """What the watcher does after a change: look again (after the settle delay) until stable."""
    for _ in range(3):
        if not store.poll():
            return
    raise AssertionError("content never settled")


def test_valid_rotation_is_served_and_counted(files: Files, clock: Clock) -> None:
    """A replaced, valid pair is published after it has stayed unchanged across two looks."""
    first, second = files.issue(), files.issue()
    store = _store(files, clock, first)
    assert not store.poll()  # nothing changed
    files.install(second)
    assert store.poll() is True  # changed since the last look: wait for it to settle
    assert _serial(store) == first.serial
    assert store.poll() is False
    assert _serial(store) == second.serial
    assert _counts(store) == (1, 0)
    assert store.stats.last_reload_success > 0


def test_content_still_changing_is_not_loaded(files: Files, clock: Clock) -> None:
    """A file that differs between two looks is left alone until it stops changing."""
    first, second = files.issue(), files.issue()
    store = _store(files, clock, first)
    files.cert.write_bytes(second.cert_pem[:300])
    assert store.poll() is True
    files.cert.write_bytes(second.cert_pem[:600])
    assert store.poll() is True
    files.cert.write_bytes(second.cert_pem)
    files.key.write_bytes(second.key_pem)
    assert store.poll() is True
    assert store.poll() is False
    assert _serial(store) == second.serial
    assert _counts(store) == (1, 0)


def test_cert_then_key_seconds_later_is_not_a_failure(
    files: Files, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """The two-step write: a key mismatch is retried within the grace period, never counted."""
    first, second = files.issue(), files.issue()
    store = _store(files, clock, first)
    caplog.set_level(logging.INFO, "fopproxy.reload")
    _replace(files.cert, second.cert_pem)
    _poll_until_settled(store)
    for _ in range(5):  # the watcher keeps checking every interval while the key is late
        clock.now += 1.5
        assert not store.poll()
    assert _serial(store) == first.serial
    assert _counts(store)[1] == 0
    assert caplog.text.count("not usable yet") == 1
    assert "does not match" in caplog.text
    _replace(files.key, second.key_pem)
    _poll_until_settled(store)
    assert _serial(store) == second.serial
    assert _counts(store) == (1, 0)


def test_truncated_file_completed_later_is_not_a_failure(files: Files, clock: Clock) -> None:
    """A PEM cut short (a slow writer) is retried and the completed file is served."""
    first, second = files.issue(), files.issue()
    store = _store(files, clock, first)
    files.key.write_bytes(second.key_pem)
    files.cert.write_bytes(second.cert_pem[: len(second.cert_pem) - 40])
    _poll_until_settled(store)
    clock.now += GRACE / 2
    store.poll()
    assert _counts(store)[1] == 0
    files.cert.write_bytes(second.cert_pem)
    _poll_until_settled(store)
    assert _serial(store) == second.serial
    assert _counts(store) == (1, 0)


def test_broken_pem_counts_once_after_grace_and_old_set_keeps_serving(
    files: Files, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken file that stays broken is one failure with its reason, however often it is polled."""
    first, second = files.issue(), files.issue()
    store = _store(files, clock, first)
    _replace(files.cert, b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    _poll_until_settled(store)
    assert _counts(store)[1] == 0
    clock.now += GRACE
    store.poll()
    assert _counts(store)[1] == 1
    assert "certificate reload failed, still serving the previous certificates" in caplog.text
    assert "tls.certificates[0]: no complete PEM certificate" in caplog.text
    for _ in range(10):
        clock.now += 5
        store.poll()
    assert _counts(store)[1] == 1
    assert _serial(store) == first.serial
    assert store.get() is store.current
    files.install(second)  # the next good files are picked up
    _poll_until_settled(store)
    assert _serial(store) == second.serial
    assert _counts(store) == (1, 1)


def test_final_errors_count_at_once_and_each_content_once(files: Files, clock: Clock) -> None:
    """Expired certificates cannot be a write in progress: no grace; two distinct ones, two failures."""
    first = files.issue()
    store = _store(files, clock, first)
    past = datetime.now(UTC) - timedelta(days=2)
    for _ in range(2):
        files.install(files.issue(not_before=past - timedelta(days=30), not_after=past))
        _poll_until_settled(store)
        store.poll()
    assert _counts(store)[1] == 2
    assert _serial(store) == first.serial


def test_wrong_key_that_stays_wrong_is_one_failure(files: Files, clock: Clock) -> None:
    first, second, third = files.issue(), files.issue(), files.issue()
    store = _store(files, clock, first)
    _replace(files.cert, second.cert_pem)
    _replace(files.key, third.key_pem)
    _poll_until_settled(store)
    clock.now += GRACE + 1
    for _ in range(4):
        store.poll()
        clock.now += 1
    assert _counts(store) == (0, 1)
    assert _serial(store) == first.serial


def test_missing_file_during_replace_is_retried(files: Files, clock: Clock) -> None:
    """`rm` then `cp` leaves a moment with no file: retried, and counted only if it stays gone."""
    first, second = files.issue(), files.issue()
    store = _store(files, clock, first)
    files.key.unlink()
    _poll_until_settled(store)
    assert _counts(store)[1] == 0
    files.install(second)
    _poll_until_settled(store)
    assert _serial(store) == second.serial
    files.key.unlink()
    _poll_until_settled(store)
    clock.now += GRACE
    store.poll()
    store.poll()
    assert _counts(store) == (1, 1)


def test_kubernetes_secret_symlink_swap_is_seen(tmp_path: Path, ca: CA, clock: Clock) -> None:
    """Files reached through `..data` change when only the `..data` symlink is swapped."""
    volume = tmp_path / "secret"
    volume.mkdir()

    def publish(pair: Pair, stamp: str) -> None:
        # What the kubelet does: a new timestamped folder, then an atomic rename of `..data`.
        folder = volume / f"..2026_11_29_{stamp}"
        folder.mkdir()
        (folder / "tls.crt").write_bytes(pair.cert_pem)
        (folder / "tls.key").write_bytes(pair.key_pem)
        (volume / "..data_tmp").symlink_to(folder.name)
        os.replace(volume / "..data_tmp", volume / "..data")

    first = ca.write(tmp_path / "issued", "a", [HOST], "rsa")
    second = ca.write(tmp_path / "issued", "b", [HOST], "ecdsa")
    publish(first, "10_00_00.1")
    (volume / "tls.crt").symlink_to("..data/tls.crt")
    (volume / "tls.key").symlink_to("..data/tls.key")
    store = CertificateStore(
        [CertificateSource(volume / "tls.crt", volume / "tls.key")], HOST, ALL, Stats(), clock=clock
    )
    assert store.current.certificates[0].key_type == "rsa"
    publish(second, "10_05_00.2")
    _poll_until_settled(store)
    assert _serial(store) == second.serial
    assert store.current.certificates[0].key_type == "ecdsa"  # the key type may change on rotation
    assert (volume / "tls.crt").is_symlink()


def test_sighup_reload_reports_at_once(files: Files, clock: Clock) -> None:
    """force=True skips settle and grace: the operator asked, so a half pair fails now."""
    first, second = files.issue(), files.issue()
    store = _store(files, clock, first)
    assert store.reload(force=True) is True  # unchanged files: re-validated and counted
    _replace(files.cert, second.cert_pem)
    assert store.reload(force=True) is False
    assert store.reload(force=True) is False
    assert _counts(store) == (1, 2)
    assert not store.poll()  # the watcher does not count that content again
    _replace(files.key, second.key_pem)
    assert store.reload(force=True) is True
    assert _serial(store) == second.serial


def test_sighup_failure_nobody_foresaw_is_counted_not_raised(
    files: Files, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the SIGHUP handler calls never raises: an unexpected error while building is a
    counted, logged failure, and the certificates in force keep serving."""
    first = files.issue()
    store = _store(files, clock, first)

    def broken(_content: object) -> None:
        raise RuntimeError("unforeseen")

    monkeypatch.setattr(store, "build", broken)
    store.reload_on_request()
    assert _counts(store) == (0, 1)
    assert _serial(store) == first.serial


def test_start_with_broken_files_raises(files: Files, clock: Clock) -> None:
    """At start there is nothing to fall back on: a broken file is an error (exit 2)."""
    first = files.issue()
    files.install(first)
    files.cert.write_bytes(first.cert_pem[:100])
    with pytest.raises(CertificateParseError):
        CertificateStore(files.sources, HOST, ALL, Stats(), clock=clock)


def test_settle_delay_is_short() -> None:
    assert settle_delay(1) == pytest.approx(0.1)
    assert settle_delay(5) == 0.5
    assert settle_delay(3600) == 0.5


async def test_watcher_picks_up_a_rotation(files: Files) -> None:
    """The real watch() loop on a short interval serves the new pair and stops on request."""
    first, second = files.issue(), files.issue("rsa")
    files.install(first)
    store = CertificateStore(files.sources, HOST, ALL, Stats())
    stop = asyncio.Event()
    task = asyncio.create_task(watch(store, 0.05, stop))
    try:
        files.install(second)
        for _ in range(200):
            if _serial(store) == second.serial:
                break
            await asyncio.sleep(0.02)
        assert _serial(store) == second.serial
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
