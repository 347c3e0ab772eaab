"""Shared session-ticket keys: key files, the ratchet, and OpenSSL resuming through them."""

from __future__ import annotations

import base64
import contextlib
import os
import ssl
from pathlib import Path

import pytest

from fopproxy.policy import PROFILES, select_suites
from fopproxy.tickets import (
    KEY_BYTES,
    KeyRing,
    Ratchet,
    ScopedKeys,
    TicketKey,
    TicketKeyError,
    parse_key_file,
    write_key_file,
)
from fopproxy.tls import TicketContexts, build_context
from tests.conftest import SERVER_NAME, TLSFiles
from tests.support.memtls import MemoryTLS, handshake_in_memory
from tests.support.proxy import client_context


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_key_file_raw_and_base64_give_the_same_keys(tmp_path: Path) -> None:
    """nginx's raw 80-byte keys and base64 lines (HAProxy's style) read alike; first encrypts."""
    raw = os.urandom(KEY_BYTES * 2)
    keys = parse_key_file(raw)
    assert [k.to_bytes() for k in keys] == [raw[:80], raw[80:]]
    # nginx's layout: name | HMAC key | AES key
    assert keys[0].name == raw[:16] and keys[0].hmac_key == raw[16:48] and keys[0].aes_key == raw[48:80]
    text = b"\n".join(base64.b64encode(raw[i : i + 80]) for i in (0, 80)) + b"\n"
    assert parse_key_file(text) == keys


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (os.urandom(48), "not a whole number"),
        (os.urandom(81), "not a whole number"),
        (base64.b64encode(os.urandom(48)), "holds 48 bytes"),
        (os.urandom(16) + os.urandom(64) + os.urandom(16) + os.urandom(64), None),
    ],
)
def test_bad_key_files_are_refused_with_the_reason(data: bytes, message: str | None) -> None:
    """A key file that is not whole 80-byte keys names what is wrong."""
    if message is None:
        assert len(parse_key_file(data)) == 2
        return
    with pytest.raises(TicketKeyError, match=message):
        parse_key_file(data)


def test_duplicate_key_names_are_refused() -> None:
    key = os.urandom(KEY_BYTES)
    with pytest.raises(TicketKeyError, match="share a name"):
        parse_key_file(key + key[:16] + os.urandom(64))


def test_written_key_file_is_private_and_fresh(tmp_path: Path) -> None:
    """`write_key_file` makes a 0600 file of fresh keys and never overwrites or follows a link."""
    path = tmp_path / "ticket.key"
    write_key_file(str(path), keys=2)
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(parse_key_file(path.read_bytes())) == 2
    with pytest.raises(FileExistsError):
        write_key_file(str(path))
    link = tmp_path / "link.key"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        write_key_file(str(link))
    assert not (tmp_path / "elsewhere").exists()


def test_key_material_never_in_repr() -> None:
    key = TicketKey.from_bytes(bytes(range(80)))
    assert bytes(range(16, 80)).hex() not in repr(key)
    assert "hmac" not in repr(key).lower()


def test_ratchet_rotates_keeps_previous_and_forgets_older() -> None:
    """Each period a new encrypting key; the previous one still decrypts; older ones do not."""
    clock = FakeClock()
    ring = Ratchet(period=3600, seed=b"s" * 32, clock=clock)
    first = ring.encrypting()
    assert ring.find(first.name) == (first, True)
    clock.now += 3600
    second = ring.encrypting()
    assert second.name != first.name
    assert ring.find(first.name) == (first, False)
    assert ring.rotations == 1
    clock.now += 3600
    assert ring.find(first.name) is None
    assert ring.find(second.name) is not None
    clock.now += 3 * 3600  # several periods at once: only the one right before is kept
    assert ring.find(second.name) is None
    assert len(ring.keys) == 2
    assert ring.rotations == 5


def test_two_ratchets_from_one_seed_agree() -> None:
    """Forked workers hold copies of one seed and one clock: they derive the same keys."""
    clock = FakeClock()
    a = Ratchet(period=60, seed=b"x" * 32, clock=clock)
    b = Ratchet(period=60, seed=b"x" * 32, clock=clock)
    for _ in range(3):
        assert a.encrypting() == b.encrypting()
        clock.now += 61
    assert Ratchet(period=60, clock=clock).encrypting() != a.encrypting()


def _server(tls_files: TLSFiles, profile: str, ring: KeyRing) -> ssl.SSLContext:
    return build_context(
        select_suites(PROFILES[profile], ()), [(str(tls_files.ecdsa.cert), str(tls_files.ecdsa.key), None)],
        tickets=ring,
    )


def _session(pair: MemoryTLS) -> ssl.SSLSession:
    """Let the client read the server's post-handshake flight (TLS 1.3 tickets come there)."""
    pair.server.write(b"x")
    pair.to_client()
    with contextlib.suppress(ssl.SSLWantReadError):
        pair.client.read(1)
    session = pair.client.session
    assert session is not None
    return session


def _resume(server: ssl.SSLContext, client: ssl.SSLContext, session: ssl.SSLSession) -> bool:
    bios = [ssl.MemoryBIO() for _ in range(4)]
    srv = server.wrap_bio(bios[0], bios[1], server_side=True)
    cli = client.wrap_bio(bios[2], bios[3], server_hostname=SERVER_NAME, session=session)
    for _ in range(6):
        for side in (cli, srv):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        bios[0].write(bios[3].read())
        bios[2].write(bios[1].read())
    return srv.session_reused


@pytest.mark.parametrize(("profile", "version"), [("card-fop", ssl.TLSVersion.TLSv1_2), ("card-fop-tls13", ssl.TLSVersion.TLSv1_3)])
def test_ticket_from_one_context_resumes_on_another(tls_files: TLSFiles, profile: str, version: ssl.TLSVersion) -> None:
    """Two contexts (two workers) sharing a ratchet's seed resume each other's tickets."""
    clock = FakeClock()
    a = _server(tls_files, profile, Ratchet(600, seed=b"k" * 32, clock=clock))
    b = _server(tls_files, profile, Ratchet(600, seed=b"k" * 32, clock=clock))
    client = client_context(tls_files.cafile)
    client.maximum_version = version
    pair = handshake_in_memory(a, client)
    assert pair.client.version() == version.name.replace("v1_", "v1.")
    session = _session(pair)
    assert _resume(b, client, session)
    # a worker with another seed (another pod without a shared key file) cannot
    c = _server(tls_files, profile, Ratchet(600, clock=clock))
    assert not _resume(c, client, session)


def test_rotation_previous_resumes_older_falls_back(tls_files: TLSFiles) -> None:
    """After one rotation the old ticket resumes; after two it is a full handshake."""
    clock = FakeClock()
    ring = Ratchet(600, clock=clock)
    server = _server(tls_files, "card-fop", ring)
    client = client_context(tls_files.cafile)
    session = _session(handshake_in_memory(server, client))
    clock.now += 600
    assert _resume(server, client, session)
    clock.now += 1200
    assert not _resume(server, client, session)


def test_file_keys_first_encrypts_all_decrypt(tls_files: TLSFiles) -> None:
    """A key file's second key still opens tickets; a ring without it does not."""
    k1, k2 = os.urandom(80), os.urandom(80)
    old = _server(tls_files, "card-fop", KeyRing(parse_key_file(k2)))
    client = client_context(tls_files.cafile)
    session = _session(handshake_in_memory(old, client))
    both = _server(tls_files, "card-fop", KeyRing(parse_key_file(k1 + k2)))
    assert _resume(both, client, session)
    only_new = _server(tls_files, "card-fop", KeyRing(parse_key_file(k1)))
    assert not _resume(only_new, client, session)


def test_context_without_ring_issues_no_ticket_and_no_early_data(tls_files: TLSFiles) -> None:
    """tickets off: OP_NO_TICKET is set and checked; early data is refused either way."""
    from fopproxy import native
    from fopproxy.errors import ComplianceError
    from fopproxy.tls import verify_context

    selection = select_suites(PROFILES["card-fop-tls13"], ())
    chain = [(str(tls_files.ecdsa.cert), str(tls_files.ecdsa.key), None)]
    plain = build_context(selection, chain)
    assert plain.options & ssl.OP_NO_TICKET
    assert native.max_early_data(plain) == 0
    with_tickets = build_context(selection, chain, tickets=Ratchet(600))
    assert not with_tickets.options & ssl.OP_NO_TICKET
    assert native.max_early_data(with_tickets) == 0
    # A context that would issue tickets while the caller asked for none fails closed.
    with pytest.raises(ComplianceError, match="required TLS options"):
        verify_context(with_tickets, selection)


def test_resumption_without_ecdhe_fails_closed(tls_files: TLSFiles) -> None:
    """A context that would resume TLS 1.3 with psk_ke (no fresh ECDHE) is refused."""
    from fopproxy.errors import ComplianceError
    from fopproxy.tls import verify_context

    selection = select_suites(PROFILES["card-fop-tls13"], ())
    ctx = build_context(selection, [(str(tls_files.ecdsa.cert), str(tls_files.ecdsa.key), None)], tickets=Ratchet(600))
    ctx.options |= ssl.Options(1 << 10)  # SSL_OP_ALLOW_NO_DHE_KEX
    with pytest.raises(ComplianceError, match="psk_ke"):
        verify_context(ctx, selection, tickets=True)


@pytest.mark.parametrize(("profile", "version"), [("card-fop", ssl.TLSVersion.TLSv1_2), ("card-fop-tls13", ssl.TLSVersion.TLSv1_3)])
def test_tickets_do_not_cross_session_contexts(tls_files: TLSFiles, profile: str, version: ssl.TLSVersion) -> None:
    """One ring, two contexts naming other certificates / client settings: no cross resumption
    (CPython 3.13 gives server connections a session id context of their own, so OpenSSL's check
    alone would let it through: the keys are scoped)."""
    selection = select_suites(PROFILES[profile], ())
    chain = [(str(tls_files.ecdsa.cert), str(tls_files.ecdsa.key), None)]
    ring = Ratchet(600, seed=b"s" * 32)
    one = build_context(selection, chain, session_context=b"A" * 32, tickets=ring)
    same = build_context(selection, chain, session_context=b"A" * 32, tickets=ring)
    other = build_context(selection, chain, session_context=b"B" * 32, tickets=ring)
    client = client_context(tls_files.cafile)
    client.maximum_version = version
    session = _session(handshake_in_memory(one, client))
    assert _resume(same, client, session)
    assert not _resume(other, client, session)


def test_scoped_keys_differ_per_scope_and_never_show_key_bytes() -> None:
    key = TicketKey.from_bytes(bytes(range(80)))
    assert key.scoped(b"") is key
    a, b = key.scoped(b"A"), key.scoped(b"B")
    assert len({key.name, a.name, b.name}) == 3
    assert len({key.aes_key, a.aes_key, b.aes_key}) == 3


def _client_hello(client: ssl.SSLContext, session: ssl.SSLSession) -> bytes:
    """The first flight of a client offering `session`: what the relay sees before OpenSSL."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = client.wrap_bio(incoming, outgoing, server_hostname=SERVER_NAME, session=session)
    with contextlib.suppress(ssl.SSLWantReadError):
        cli.do_handshake()
    return outgoing.read()


def _pair(tls_files: TLSFiles, profile: str, ring: KeyRing, scope: bytes = b"S" * 32) -> TicketContexts:
    selection = select_suites(PROFILES[profile], ())
    chain = [(str(tls_files.ecdsa.cert), str(tls_files.ecdsa.key), None)]
    fast = build_context(selection, chain, session_context=scope, tickets=ring, ticket_key_in_libssl=True)
    keyed = build_context(selection, chain, session_context=scope, tickets=ring)
    return TicketContexts(fast, keyed, ring, scope)


@pytest.mark.parametrize(("profile", "version"), [("card-fop", ssl.TLSVersion.TLSv1_2), ("card-fop-tls13", ssl.TLSVersion.TLSv1_3)])
def test_key_in_libssl_and_callback_open_each_others_tickets(tls_files: TLSFiles, profile: str, version: ssl.TLSVersion) -> None:
    """The context holding the current key in libssl and the callback context are one key
    schedule: a ticket from either resumes on the other, in TLS 1.2 and 1.3."""
    from fopproxy import native

    ring = Ratchet(600, seed=b"f" * 32, clock=FakeClock())
    pair = _pair(tls_files, profile, ring)
    assert native.ticket_key_name(pair.fast) == ScopedKeys(ring, b"S" * 32).encrypting().name
    assert pair.start() == (pair.fast, ())  # one key in force: every client starts on `fast`
    client = client_context(tls_files.cafile)
    client.maximum_version = version
    from_fast = _session(handshake_in_memory(pair.fast, client))
    assert _resume(pair.keyed, client, from_fast)
    from_keyed = _session(handshake_in_memory(pair.keyed, client))
    assert _resume(pair.fast, client, from_keyed)
    assert _resume(pair.fast, client, from_fast)


@pytest.mark.parametrize(("profile", "version"), [("card-fop", ssl.TLSVersion.TLSv1_2), ("card-fop-tls13", ssl.TLSVersion.TLSv1_3)])
def test_rotation_moves_the_libssl_key_and_routes_previous_tickets(tls_files: TLSFiles, profile: str, version: ssl.TLSVersion) -> None:
    """After a rotation libssl holds the new key; a previous-period ticket names the previous
    key in the ClientHello (found there, it starts on `keyed`, which resumes it; `fast` would
    not); two rotations later the name is no longer looked for and the ticket falls back."""
    from fopproxy import native

    clock = FakeClock()
    ring = Ratchet(600, seed=b"r" * 32, clock=clock)
    pair = _pair(tls_files, profile, ring)
    client = client_context(tls_files.cafile)
    client.maximum_version = version
    session = _session(handshake_in_memory(pair.fast, client))
    first = ScopedKeys(ring, b"S" * 32).encrypting().name
    clock.now += 600
    context, older = pair.start()
    assert context is pair.fast
    assert older == (first,)
    assert native.ticket_key_name(pair.fast) != first
    assert native.ticket_key_name(pair.fast) == ScopedKeys(ring, b"S" * 32).encrypting().name
    assert first in _client_hello(client, session)
    assert not _resume(pair.fast, client, session)
    assert _resume(pair.keyed, client, session)
    clock.now += 1200
    assert pair.start()[1] == (ScopedKeys(ring, b"S" * 32).all()[1].name,)
    assert first not in pair.start()[1]
    assert not _resume(pair.keyed, client, session)


def test_key_file_change_reaches_libssl_at_the_next_connection(tls_files: TLSFiles) -> None:
    """A file-driven ring (no clock): a replaced key list is copied at the next start()."""
    from fopproxy import native

    k1, k2 = parse_key_file(os.urandom(80)), parse_key_file(os.urandom(80))
    ring = KeyRing(k1)
    pair = _pair(tls_files, "card-fop", ring, scope=b"")
    assert native.ticket_key_name(pair.fast) == k1[0].name
    ring.replace(k2 + k1)
    assert pair.start() == (pair.fast, (k1[0].name,))
    assert native.ticket_key_name(pair.fast) == k2[0].name
