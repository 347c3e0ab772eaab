"""Session-ticket keys that every worker (and, with a key file, every pod) shares.

Why not OpenSSL's own ticket key: it is random per SSL_CTX, so with `workers: N` (SO_REUSEPORT
spreads reconnections) a ticket resumes only on the worker that issued it, and it never rotates.

Two sources, one shape (`KeyRing`: the first key encrypts new tickets, every key decrypts):

- `Ratchet` (the default): a random seed made once in the process that forks the workers, then
  one key per `rotation` period, each derived from the one before by a one-way function and the
  older ones forgotten. Every forked process steps the same ratchet on the same (system-wide
  monotonic) clock, so they agree without talking to each other, and nothing is written anywhere.
  Forward secrecy is bounded: a key that leaks opens the tickets of its own period and the one
  before it (still accepted), never older ones.
- A key file (`tls.session_tickets.key_file`) in the 80-byte format nginx and HAProxy read, for
  several pods behind one load balancer; rotation is then the operator's (e.g. a Kubernetes
  Secret), and the file is re-read like the certificates.

The 80-byte key is name (16) | HMAC-SHA256 key (32) | AES-256-CBC key (32), nginx's layout.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fopproxy.sources import read_pem_file

KEY_BYTES = 80
NAME_BYTES = 16
# A key file holds a handful of keys; anything much larger is not a key file.
MAX_KEYS = 64


class TicketKeyError(ValueError):
    """A key file that cannot be used as it is (the message says why)."""


@dataclass(frozen=True, slots=True, repr=False)
class TicketKey:
    name: bytes
    hmac_key: bytes
    aes_key: bytes

    @classmethod
    def from_bytes(cls, raw: bytes) -> TicketKey:
        if len(raw) != KEY_BYTES:
            raise TicketKeyError(f"a ticket key is {KEY_BYTES} bytes, not {len(raw)}")
        return cls(raw[:16], raw[16:48], raw[48:80])

    def to_bytes(self) -> bytes:
        return self.name + self.hmac_key + self.aes_key

    def scoped(self, scope: bytes) -> TicketKey:
        """This key as seen by one scope (one set of served certificates and client-auth
        settings): another scope derives other name, HMAC and AES keys, so its tickets never
        open here. Empty scope: the key itself."""
        if not scope:
            return self

        def derive(secret: bytes) -> bytes:
            return hmac.new(secret, b"fopproxy ticket scope " + scope, hashlib.sha256).digest()

        name = hashlib.sha256(b"fopproxy ticket scope " + scope + self.name).digest()[:NAME_BYTES]
        return TicketKey(name, derive(self.hmac_key), derive(self.aes_key))

    def __repr__(self) -> str:  # never the key material, not even in a traceback
        return f"TicketKey(name={self.name.hex()})"


def parse_key_file(data: bytes) -> tuple[TicketKey, ...]:
    """Keys from a key file: raw N x 80 bytes (nginx), or base64 lines of 80 bytes each.

    The first key encrypts, all decrypt. 48-byte (AES-128) keys are refused: the rule set asks
    for the strength we use for everything else.
    """
    if not data:
        raise TicketKeyError("the key file is empty")
    text = _as_base64_lines(data)
    blobs: list[bytes]
    if text is not None:
        blobs = []
        for number, line in enumerate(text, 1):
            try:
                blob = base64.b64decode(line, validate=True)
            except binascii.Error:
                raise TicketKeyError(f"line {number} is not base64") from None
            if len(blob) != KEY_BYTES:
                raise TicketKeyError(
                    f"line {number} holds {len(blob)} bytes, a key is {KEY_BYTES} "
                    "(make one with: fopproxy ticket-key FILE)"
                )
            blobs.append(blob)
    elif len(data) % KEY_BYTES == 0:
        blobs = [data[i : i + KEY_BYTES] for i in range(0, len(data), KEY_BYTES)]
    else:
        raise TicketKeyError(
            f"{len(data)} bytes is not a whole number of {KEY_BYTES}-byte keys "
            "(nginx's 48-byte AES-128 keys are not accepted)"
        )
    if len(blobs) > MAX_KEYS:
        raise TicketKeyError(f"{len(blobs)} keys; at most {MAX_KEYS}")
    keys = tuple(TicketKey.from_bytes(blob) for blob in blobs)
    if len({key.name for key in keys}) != len(keys):
        raise TicketKeyError("two keys share a name")
    return keys


def _as_base64_lines(data: bytes) -> list[str] | None:
    """The non-empty lines of `data` if it is all printable base64 text, else None (raw keys)."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n \t")
    if not set(text) <= allowed:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines or None


def new_key() -> bytes:
    """A fresh random 80-byte key."""
    return os.urandom(KEY_BYTES)


def write_key_file(path: str, keys: int = 1) -> None:
    """Write `keys` fresh keys (raw, nginx format) to a new file readable by its owner only."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(b"".join(new_key() for _ in range(keys)))


class KeyRing:
    """The keys in force: `keys[0]` encrypts, any decrypts; swapped whole, never edited."""

    def __init__(self, keys: tuple[TicketKey, ...]) -> None:
        if not keys:
            raise TicketKeyError("a key ring needs at least one key")
        self._keys = keys
        self._by_name = {key.name: key for key in keys}
        self.rotations = 0
        # Bumped on every change of the keys in force: whoever copied them (tls.TicketContexts
        # puts the encrypting key into libssl) compares it to know when to copy again.
        self.generation = 0
        self.clock: Callable[[], float] = time.monotonic

    @property
    def keys(self) -> tuple[TicketKey, ...]:
        self.refresh()
        return self._keys

    def encrypting(self) -> TicketKey:
        self.refresh()
        return self._keys[0]

    def find(self, name: bytes) -> tuple[TicketKey, bool] | None:
        """(key, is it the encrypting one) for a ticket's key name; None: unknown or expired."""
        self.refresh()
        key = self._by_name.get(name)
        if key is None:
            return None
        return key, key is self._keys[0]

    def replace(self, keys: tuple[TicketKey, ...]) -> None:
        if not keys:
            raise TicketKeyError("a key ring needs at least one key")
        self._keys = keys
        self._by_name = {key.name: key for key in keys}
        self.rotations += 1
        self.generation += 1

    def refresh(self) -> None:
        """Hook for time-driven rings; a file-driven ring changes only through `replace`."""

    def changes_at(self) -> float:
        """When (on `clock`) the keys change on their own next: never, for a fixed ring."""
        return math.inf


class ScopedKeys:
    """A ring's keys for one scope, derived once per key (see TicketKey.scoped).

    OpenSSL is meant to refuse a session made under another session id context, but CPython
    3.13 gives each server-side connection a session id context of its own, so for tickets
    that check no longer separates two contexts; scoping the keys does, on every runtime.
    """

    def __init__(self, ring: KeyRing, scope: bytes) -> None:
        self.ring = ring
        self.scope = scope
        self._derived: dict[TicketKey, TicketKey] = {}

    def _scoped(self, key: TicketKey) -> TicketKey:
        derived = self._derived.get(key)
        if derived is None:
            if len(self._derived) > MAX_KEYS:
                self._derived.clear()  # keys that rotated out
            derived = self._derived[key] = key.scoped(self.scope)
        return derived

    def encrypting(self) -> TicketKey:
        return self._scoped(self.ring.encrypting())

    def all(self) -> tuple[TicketKey, ...]:
        """Every key in force in this scope, the encrypting one first."""
        return tuple(self._scoped(key) for key in self.ring.keys)

    def find(self, name: bytes) -> tuple[TicketKey, bool] | None:
        """(key, is it the encrypting one) for a ticket's key name in this scope."""
        for index, key in enumerate(self.ring.keys):
            derived = self._scoped(key)
            if derived.name == name:
                return derived, index == 0
        return None


def _step(secret: bytes) -> bytes:
    return hmac.new(secret, b"fopproxy ticket ratchet step", hashlib.sha256).digest()


def _ticket_key(secret: bytes) -> TicketKey:
    def derive(label: bytes) -> bytes:
        return hmac.new(secret, b"fopproxy ticket key " + label, hashlib.sha256).digest()

    return TicketKey(derive(b"name")[:NAME_BYTES], derive(b"hmac"), derive(b"aes"))


class Ratchet(KeyRing):
    """A key per `period` seconds on the monotonic clock; current and previous in force.

    Stepping is one-way (HMAC of the previous secret) and the secret of a period is forgotten
    once the next one exists, so nothing in memory opens tickets older than the previous period.
    """

    def __init__(
        self, period: float, seed: bytes | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if period <= 0:
            raise ValueError("the rotation period must be positive")
        self.period = period
        self._origin = clock()
        self._index = 0
        self._secret = seed if seed is not None else os.urandom(32)
        super().__init__((_ticket_key(self._secret),))
        self.clock = clock

    def refresh(self) -> None:
        index = math.floor((self.clock() - self._origin) / self.period)
        if index <= self._index:
            return
        # Step forward to `index`; only the secret of the period before it is kept as a key.
        previous_secret = self._secret
        for _ in range(index - self._index):
            previous_secret, self._secret = self._secret, _step(self._secret)
        current = _ticket_key(self._secret)
        # The previous key is accepted only if it belongs to the period right before this one.
        keys = (current, _ticket_key(previous_secret))
        self.rotations += index - self._index
        self.generation += 1
        self._index = index
        self._keys = keys
        self._by_name = {key.name: key for key in keys}

    def changes_at(self) -> float:
        return self._origin + (self._index + 1) * self.period


class FileKeyRing(KeyRing):
    """Keys from a key file, re-read when its content changes; a bad file keeps the old keys."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = self._read()
        super().__init__(parse_key_file(data))
        self.rotations = 0
        self._digest = hashlib.sha256(data).digest()

    def _read(self) -> bytes:
        # The same guarded read as the certificates: no FIFO, no device, at most 1 MiB.
        return read_pem_file(self.path)

    def reload(self) -> bool:
        """Re-read the file; True if new keys are in force. OSError / TicketKeyError: unusable,
        and the keys in force stay."""
        data = self._read()
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            return False
        self.replace(parse_key_file(data))
        self._digest = digest
        return True


def ticket_keys(enabled: bool, rotation: float, key_file: Path | None) -> KeyRing | None:
    """The ring the config asks for, made once before any worker is forked (they share it)."""
    if not enabled:
        return None
    if key_file is not None:
        return FileKeyRing(key_file)
    return Ratchet(rotation)
