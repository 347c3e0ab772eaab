"""The configuration model: YAML parsed once into frozen objects, every problem found up front.

Nothing downstream reads raw dicts. `load_config` collects *all* problems as `key.path: message`
lines before raising, so a user fixes a bad file in one pass; unknown keys are errors (a typo in
`timeouts.idle` must not silently fall back to a default).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from fopproxy.clientauth import ClientAuthConfig, parse_client_auth
from fopproxy.errors import ConfigError
from fopproxy.policy import DEFAULT_PROFILE, PROFILES, SuiteSelection, select_suites
from fopproxy.proxyproto import PROXY_PROTOCOLS, ProxyProtocol
from fopproxy.sources import CertificateSource

LogFormat = Literal["text", "json"]
Mode = Literal["tcp", "http"]
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class UnixAddress:
    path: Path

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True)
class SessionTickets:
    """TLS 1.2 session tickets and TLS 1.3 PSK resumption with keys every worker shares."""

    enabled: bool = True
    # Seconds a ratchet key encrypts new tickets; the previous key still decrypts for as long.
    rotation: float = 21600.0
    # Keys from a file (nginx's 80-byte format) instead of the ratchet, for several pods.
    key_file: Path | None = None


@dataclass(frozen=True)
class TLSConfig:
    selection: SuiteSelection
    certificates: tuple[CertificateSource, ...]
    reload_interval: float
    # How long a half-written rotation (key not matching, file cut short or missing) may last
    # before the reload counts as failed; see reload.py.
    reload_grace: float = 10.0
    client_auth: ClientAuthConfig = field(default_factory=ClientAuthConfig)
    session_tickets: SessionTickets = SessionTickets()

    @property
    def profile_name(self) -> str:
        return self.selection.profile.name


@dataclass(frozen=True)
class Timeouts:
    handshake: float = 10.0
    connect: float = 5.0
    idle: float = 300.0
    drain: float = 30.0
    # A closing connection that cannot deliver what is queued (a peer with a zero window) within
    # this bound is reset, so it cannot keep its slot and buffers.
    close: float = 5.0


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: LogFormat = "text"
    connections: bool = True


@dataclass(frozen=True)
class MetricsConfig:
    listen: TcpAddress | None = None


# `trust: mozilla`: the certifi bundle, which is Mozilla's root store (see docs/COMPLIANCE.md).
MOZILLA = "mozilla"


@dataclass(frozen=True)
class OutboundTimeouts:
    """Seconds allowed to dial, to finish the TLS handshake, and with no byte either way."""

    connect: float
    handshake: float
    idle: float


@dataclass(frozen=True)
class OutboundConfig:
    """One local listener and the TLS server its connections are carried to."""

    index: int  # position in the `outbound:` list, for messages that name `outbound[i].key`
    name: str
    listen: TcpAddress
    connect: TcpAddress
    server_name: str
    trust: Path | None  # None: the Mozilla roots (certifi); else a PEM file of trusted certs
    selection: SuiteSelection
    client_certificate: CertificateSource | None
    timeouts: OutboundTimeouts
    allow_remote: bool = False

    @property
    def key(self) -> str:
        """`outbound[i]`: the config path that user-facing messages start with."""
        return f"outbound[{self.index}]"

    @property
    def trust_label(self) -> str:
        return MOZILLA if self.trust is None else str(self.trust)


@dataclass(frozen=True)
class HttpConfig:
    """`mode: http` settings: what the request-aware pump (fopproxy/http/) may accept and add."""

    max_header_bytes: int = 16384
    forwarded: bool = True
    client_cert_header: bool = True


@dataclass(frozen=True)
class Config:
    """The whole file. The inbound listener (`listen`, `backend`, `server_name`, `tls`) is all or
    nothing and may be absent when `outbound` has entries; at least one of the two is there."""

    listen: TcpAddress | None
    backend: TcpAddress | UnixAddress | None
    server_name: str | None
    tls: TLSConfig | None
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_connections: int = 10000
    # Whether the file set max_connections: only a user's own number is worth a warning when the
    # open-file limit cuts it short (the default adapts to the limit quietly).
    max_connections_set: bool = False
    workers: int = 1
    backlog: int = 1024
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # PROXY protocol header sent to the backend before the first byte (proxyproto.py).
    proxy_protocol: ProxyProtocol = "off"
    mode: Mode = "tcp"
    http: HttpConfig = field(default_factory=HttpConfig)
    source: Path | None = None
    outbound: tuple[OutboundConfig, ...] = ()

    @property
    def inbound(self) -> bool:
        """Whether the TLS listener runs (an outbound-only config has none)."""
        return self.tls is not None


T = TypeVar("T")

INBOUND_KEYS = ("listen", "backend", "server_name", "tls")


class _Problems:
    """Collects `path: message` lines; each getter returns None (never raises) on a bad value."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.lines.append(f"{path}: {message}")

    def mapping(self, value: object, path: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.add(path or "(top level)", f"expected a mapping, got {_kind(value)}")
            return {}
        for key in value:
            if key not in allowed:
                where = f"{path}.{key}" if path else str(key)
                self.add(where, f"unknown key (allowed here: {', '.join(allowed)})")
        return value

    def typed(
        self,
        mapping: Mapping[str, Any],
        key: str,
        path: str,
        parse: Callable[[object], T],
        default: T | None = None,
        *,
        required: bool = False,
    ) -> T | None:
        where = f"{path}.{key}" if path else key
        if key not in mapping or mapping[key] is None:
            if required:
                self.add(where, "is required")
            return default
        try:
            return parse(mapping[key])
        except ValueError as exc:
            self.add(where, str(exc))
            return None


def _kind(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _string(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {_kind(value)}")
    return value.strip()


def _number_of_seconds(value: object) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number of seconds, got {_kind(value)}")
    return value


def _seconds(value: object) -> float:
    seconds = _number_of_seconds(value)
    if not 0 < seconds <= 86400:
        raise ValueError(f"must be > 0 and <= 86400 seconds, got {seconds}")
    return float(seconds)


def _grace_seconds(value: object) -> float:
    seconds = _number_of_seconds(value)
    if not 0 <= seconds <= 3600:
        raise ValueError(f"must be >= 0 and <= 3600 seconds, got {seconds}")
    return float(seconds)


def _positive_int(limit: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_kind(value)}")
        if not 1 <= value <= limit:
            raise ValueError(f"must be between 1 and {limit}, got {value}")
        return value

    return parse


def _workers(value: object) -> int:
    if value == "auto":
        if hasattr(os, "sched_getaffinity"):
            return len(os.sched_getaffinity(0))
        return os.cpu_count() or 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a number of processes or 'auto', got {_kind(value)}")
    if not 1 <= value <= 256:
        raise ValueError(f"must be between 1 and 256 (or 'auto'), got {value}")
    return value


def parse_tcp_address(value: object) -> TcpAddress:
    """`host:port` or `[v6]:port`; the host is an IP literal or a DNS name."""
    text = _string(value)
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not [ipv6]:port")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not host:port (IPv6 as [::1]:port)")
        if ":" in host:
            raise ValueError(f"{text!r}: put an IPv6 address in brackets, e.g. [::]:8443")
        if not _valid_host(host):
            raise ValueError(f"{host!r} is neither an IP address nor a valid host name")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
    return TcpAddress(host, int(port_text))


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _valid_dns_name(host)
    return True


def _valid_dns_name(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return len(name) <= 253 and all(
        0 < len(label) <= 63
        and label.replace("-", "").isalnum()
        and label.isascii()
        and not label.startswith("-")
        and not label.endswith("-")
        for label in labels
    )


def _server_name(value: object) -> str:
    name = _string(value).lower().rstrip(".")
    if "*" in name:
        raise ValueError("must be the exact hostname clients use, not a wildcard")
    if not _valid_dns_name(name):
        raise ValueError(f"{name!r} is not a valid DNS name")
    return name


def _log_format(value: object) -> LogFormat:
    if value == "text":
        return "text"
    if value == "json":
        return "json"
    raise ValueError(f"must be 'text' or 'json', got {value!r}")


def _log_level(value: object) -> str:
    text = _string(value).lower()
    if text not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return text


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_kind(value)}")
    return value


def _proxy_protocol(value: object) -> ProxyProtocol:
    if value is False:  # YAML 1.1 reads a bare `off` as false
        return "off"
    for name in PROXY_PROTOCOLS:
        if value == name:
            return name
    raise ValueError(f"must be off, v1 or v2, got {value!r}")


def parse_config(raw: object, base_dir: Path, source: Path | None = None) -> Config:
    """Turn a parsed YAML document into a Config, or raise ConfigError listing every problem."""
    p = _Problems()
    top = p.mapping(
        raw,
        "",
        (
            "listen", "backend", "server_name", "tls", "timeouts", "max_connections",
            "workers", "backlog", "logging", "metrics", "outbound", "proxy_protocol",
            "mode", "http",
        ),
    )
    if raw is None:
        p.add(
            "(top level)",
            "the file is empty; listen, backend, server_name and tls are required "
            "(or an outbound list)",
        )
    # The inbound listener is optional only as a whole: an outbound-only file names none of its
    # keys; naming any of them asks for all of them.
    inbound = top.get("outbound") is None or any(
        top.get(key) is not None for key in INBOUND_KEYS
    )
    listen = backend = server_name = tls = None
    if inbound:
        listen = p.typed(top, "listen", "", parse_tcp_address, required=True)
        backend = p.typed(top, "backend", "", _backend_address(base_dir), required=True)
        server_name = p.typed(top, "server_name", "", _server_name, required=True)
        tls = _parse_tls(p, top.get("tls"), base_dir)

    t = p.mapping(
        top.get("timeouts"), "timeouts", ("handshake", "connect", "idle", "drain", "close")
    )
    defaults = Timeouts()
    timeouts = Timeouts(
        handshake=p.typed(t, "handshake", "timeouts", _seconds, defaults.handshake)
        or defaults.handshake,
        connect=p.typed(t, "connect", "timeouts", _seconds, defaults.connect) or defaults.connect,
        idle=p.typed(t, "idle", "timeouts", _seconds, defaults.idle) or defaults.idle,
        drain=p.typed(t, "drain", "timeouts", _seconds, defaults.drain) or defaults.drain,
        close=p.typed(t, "close", "timeouts", _seconds, defaults.close) or defaults.close,
    )
    max_connections = p.typed(top, "max_connections", "", _positive_int(1_000_000), 10000)
    workers = p.typed(top, "workers", "", _workers, 1)
    backlog = p.typed(top, "backlog", "", _positive_int(65535), 1024)

    lg = p.mapping(top.get("logging"), "logging", ("level", "format", "connections"))
    logging_config = LoggingConfig(
        level=p.typed(lg, "level", "logging", _log_level, "info") or "info",
        format=p.typed(lg, "format", "logging", _log_format, "text") or "text",
        connections=bool(p.typed(lg, "connections", "logging", _boolean, True)),
    )
    m = p.mapping(top.get("metrics"), "metrics", ("listen",))
    metrics = MetricsConfig(listen=p.typed(m, "listen", "metrics", parse_tcp_address))
    if listen and metrics.listen and listen == metrics.listen:
        p.add("metrics.listen", f"is the same address as listen ({listen})")
    taken = {str(a): k for a, k in ((listen, "listen"), (metrics.listen, "metrics.listen")) if a}
    outbound = _parse_outbound(p, top.get("outbound"), base_dir, timeouts, taken)
    if not inbound and not outbound and raw is not None:
        p.add(
            "outbound",
            "is empty and there is no inbound listener: nothing to serve "
            "(give outbound entries, or listen, backend, server_name and tls)",
        )
    proxy_protocol: ProxyProtocol = (
        p.typed(top, "proxy_protocol", "", _proxy_protocol, "off") or "off"
    )

    mode: Mode = p.typed(top, "mode", "", _mode, "tcp") or "tcp"
    http = _parse_http(p, top.get("http"))

    if p.lines:
        raise ConfigError(p.lines)
    # Every getter that returned None added a problem, so none of these is None here.
    if inbound:
        assert listen is not None
        assert backend is not None
        assert server_name is not None
        assert tls is not None
    return Config(
        listen=listen,
        backend=backend,
        server_name=server_name,
        tls=tls,
        timeouts=timeouts,
        max_connections=max_connections or 10000,
        max_connections_set="max_connections" in top,
        workers=workers or 1,
        backlog=backlog or 1024,
        logging=logging_config,
        metrics=metrics,
        proxy_protocol=proxy_protocol,
        mode=mode,
        http=http,
        source=source,
        outbound=outbound,
    )


def _mode(value: object) -> Mode:
    if value == "tcp":
        return "tcp"
    if value == "http":
        return "http"
    raise ValueError(f"must be 'tcp' or 'http', got {value!r}")


# A request head below 1 KiB cannot carry the headers a payment call needs; above 1 MiB it is an
# attack on memory (every connection may buffer this much before its request is parsed).
MIN_HEADER_BYTES = 1024
MAX_HEADER_BYTES = 1024 * 1024


def _header_bytes(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a number of bytes, got {_kind(value)}")
    if not MIN_HEADER_BYTES <= value <= MAX_HEADER_BYTES:
        raise ValueError(
            f"must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES} bytes, got {value}"
        )
    return value


def _parse_http(p: _Problems, raw: object) -> HttpConfig:
    h = p.mapping(raw, "http", ("max_header_bytes", "forwarded", "client_cert_header"))
    defaults = HttpConfig()
    return HttpConfig(
        max_header_bytes=p.typed(h, "max_header_bytes", "http", _header_bytes)
        or defaults.max_header_bytes,
        forwarded=bool(p.typed(h, "forwarded", "http", _boolean, defaults.forwarded)),
        client_cert_header=bool(
            p.typed(h, "client_cert_header", "http", _boolean, defaults.client_cert_header)
        ),
    )


def _backend_address(base_dir: Path) -> Callable[[object], TcpAddress | UnixAddress]:
    def parse(value: object) -> TcpAddress | UnixAddress:
        text = _string(value)
        if text.startswith("unix:"):
            path = text.removeprefix("unix:")
            if not path:
                raise ValueError("unix: needs a socket path, e.g. unix:/run/api.sock")
            return UnixAddress(base_dir / path)
        return parse_tcp_address(text)

    return parse


def _path(base_dir: Path) -> Callable[[object], Path]:
    def parse(value: object) -> Path:
        return base_dir / Path(_string(value)).expanduser()

    return parse


def _parse_tls(p: _Problems, raw: object, base_dir: Path) -> TLSConfig | None:
    if raw is None:
        p.add("tls", "is required (at least tls.certificates)")
        return None
    tls = p.mapping(
        raw,
        "tls",
        (
            "profile", "ciphers", "certificates", "reload_interval", "reload_grace",
            "session_tickets", "client_auth",
        ),
    )
    if not isinstance(raw, Mapping):
        return None
    profile_name = p.typed(tls, "profile", "tls", _string, DEFAULT_PROFILE) or DEFAULT_PROFILE
    profile = PROFILES.get(profile_name)
    if profile is None:
        p.add("tls.profile", f"unknown profile {profile_name!r} (use {' or '.join(PROFILES)})")
        return None
    ciphers_raw = tls.get("ciphers") or []
    selection = None
    if not isinstance(ciphers_raw, list) or not all(isinstance(c, str) for c in ciphers_raw):
        p.add("tls.ciphers", "expected a list of suite names")
    else:
        try:
            selection = select_suites(profile, tuple(c.strip() for c in ciphers_raw))
        except ValueError as exc:
            p.add("tls.ciphers", str(exc).removeprefix(""))
    reload_interval = p.typed(tls, "reload_interval", "tls", _seconds, 5.0) or 5.0
    reload_grace = p.typed(tls, "reload_grace", "tls", _grace_seconds, 10.0)

    certificates: list[CertificateSource] = []
    entries = tls.get("certificates")
    if not isinstance(entries, list) or not entries:
        p.add("tls.certificates", "expected a non-empty list of {cert, key} entries")
    else:
        parse_path = _path(base_dir)
        for index, entry in enumerate(entries):
            where = f"tls.certificates[{index}]"
            item = p.mapping(entry, where, ("cert", "key", "passphrase_file"))
            if not isinstance(entry, Mapping):
                continue
            cert = p.typed(item, "cert", where, parse_path, required=True)
            key = p.typed(item, "key", where, parse_path, required=True)
            passphrase = p.typed(item, "passphrase_file", where, parse_path)
            if cert and key:
                certificates.append(CertificateSource(cert, key, passphrase))
    tickets = _parse_session_tickets(p, tls.get("session_tickets"), base_dir)
    client_auth = parse_client_auth(tls.get("client_auth"), _path(base_dir), p.add)
    if selection is None or client_auth is None or p.lines:
        return None
    assert reload_grace is not None  # a bad value added a problem above
    return TLSConfig(
        selection,
        tuple(certificates),
        reload_interval,
        reload_grace,
        session_tickets=tickets,
        client_auth=client_auth,
    )


def _rotation_seconds(value: object) -> float:
    seconds = _number_of_seconds(value)
    if not 60 <= seconds <= 7 * 86400:
        raise ValueError(f"must be >= 60 and <= 604800 seconds (7 days), got {seconds}")
    return float(seconds)


def _parse_session_tickets(p: _Problems, raw: object, base_dir: Path) -> SessionTickets:
    where = "tls.session_tickets"
    section = p.mapping(raw, where, ("enabled", "rotation", "key_file"))
    default = SessionTickets()
    enabled = p.typed(section, "enabled", where, _boolean, default.enabled)
    rotation = p.typed(section, "rotation", where, _rotation_seconds, default.rotation)
    key_file = p.typed(section, "key_file", where, _path(base_dir))
    if key_file is not None and "rotation" in section:
        p.add(f"{where}.rotation", "has no effect with key_file (its keys are used as given)")
    return SessionTickets(
        enabled=default.enabled if enabled is None else enabled,
        rotation=rotation or default.rotation,
        key_file=key_file,
    )


OUTBOUND_KEYS = (
    "name", "listen", "connect", "server_name", "trust", "profile", "ciphers",
    "client_certificate", "allow_remote", "timeouts",
)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_outbound(
    p: _Problems,
    raw: object,
    base_dir: Path,
    timeouts: Timeouts,
    taken: dict[str, str],
) -> tuple[OutboundConfig, ...]:
    """The `outbound:` list; each problem is named `outbound[i].key`."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        p.add("outbound", f"expected a list of entries, got {_kind(raw)}")
        return ()
    entries: list[OutboundConfig] = []
    names: dict[str, str] = {}
    parse_path = _path(base_dir)
    for index, entry in enumerate(raw):
        where = f"outbound[{index}]"
        item = p.mapping(entry, where, OUTBOUND_KEYS)
        if not isinstance(entry, Mapping):
            continue
        before = len(p.lines)
        listen = p.typed(item, "listen", where, parse_tcp_address, required=True)
        connect = p.typed(item, "connect", where, parse_tcp_address, required=True)
        allow_remote = bool(p.typed(item, "allow_remote", where, _boolean, False))
        if listen is not None and not allow_remote and not _loopback(listen.host):
            p.add(
                f"{where}.listen",
                f"{listen} is not a loopback address: the plain side would be reachable from "
                "the network (use 127.0.0.1 or [::1], or set allow_remote: true)",
            )
        if listen is not None:
            other = taken.get(str(listen))
            if other is not None:
                p.add(f"{where}.listen", f"is the same address as {other} ({listen})")
            taken[str(listen)] = f"{where}.listen"
        server_name = p.typed(item, "server_name", where, _server_name)
        if server_name is None and connect is not None and "server_name" not in item:
            if _valid_dns_name(connect.host) and not _is_ip(connect.host):
                server_name = connect.host.lower().rstrip(".")
            else:
                p.add(
                    f"{where}.server_name",
                    f"is required when connect is an IP address ({connect.host}): the name "
                    "the server's certificate must match",
                )
        name = p.typed(item, "name", where, _label) or (str(listen) if listen else None)
        if name is not None:
            if name in names:
                p.add(f"{where}.name", f"{name!r} is already the name of {names[name]}")
            names[name] = where
        trust_raw = item.get("trust", MOZILLA)
        trust: Path | None = None
        if trust_raw != MOZILLA:
            trust = p.typed(item, "trust", where, parse_path)
        profile_name = p.typed(item, "profile", where, _string, DEFAULT_PROFILE) or DEFAULT_PROFILE
        profile = PROFILES.get(profile_name)
        selection = None
        if profile is None:
            p.add(
                f"{where}.profile",
                f"unknown profile {profile_name!r} (use {' or '.join(PROFILES)})",
            )
        else:
            ciphers_raw = item.get("ciphers") or []
            if not isinstance(ciphers_raw, list) or not all(
                isinstance(c, str) for c in ciphers_raw
            ):
                p.add(f"{where}.ciphers", "expected a list of suite names")
            else:
                try:
                    selection = select_suites(profile, tuple(c.strip() for c in ciphers_raw))
                except ValueError as exc:
                    p.add(f"{where}.ciphers", str(exc))
        client_certificate = None
        if item.get("client_certificate") is not None:
            cc_where = f"{where}.client_certificate"
            cc = p.mapping(item["client_certificate"], cc_where, ("cert", "key", "passphrase_file"))
            if isinstance(item["client_certificate"], Mapping):
                cert = p.typed(cc, "cert", cc_where, parse_path, required=True)
                key = p.typed(cc, "key", cc_where, parse_path, required=True)
                passphrase = p.typed(cc, "passphrase_file", cc_where, parse_path)
                if cert and key:
                    client_certificate = CertificateSource(cert, key, passphrase)
        t_where = f"{where}.timeouts"
        t = p.mapping(item.get("timeouts"), t_where, ("connect", "handshake", "idle"))
        entry_timeouts = OutboundTimeouts(
            connect=p.typed(t, "connect", t_where, _seconds) or timeouts.connect,
            handshake=p.typed(t, "handshake", t_where, _seconds) or timeouts.handshake,
            idle=p.typed(t, "idle", t_where, _seconds) or timeouts.idle,
        )
        if len(p.lines) > before:
            continue
        assert listen is not None
        assert connect is not None
        assert server_name is not None
        assert name is not None
        assert selection is not None
        entries.append(
            OutboundConfig(
                index=index,
                name=name,
                listen=listen,
                connect=connect,
                server_name=server_name,
                trust=trust,
                selection=selection,
                client_certificate=client_certificate,
                timeouts=entry_timeouts,
                allow_remote=allow_remote,
            )
        )
    return tuple(entries)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _label(value: object) -> str:
    """A name for metrics labels and logs: short and plain, so it reads the same everywhere."""
    text = _string(value)
    if len(text) > 64 or not all(c.isalnum() or c in "-_.:[]" for c in text):
        raise ValueError(
            f"{text!r}: use at most 64 letters, digits and - _ . : (it becomes a metric label)"
        )
    return text


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the YAML file at `path`; relative paths resolve against its folder."""
    file = Path(path).expanduser().absolute()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read ({exc.strerror})"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{file}: not UTF-8 text"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{file}: YAML syntax error at {where}: {problem}"]) from None
    return parse_config(raw, file.parent, file)
