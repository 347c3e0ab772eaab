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

from fopproxy.errors import ConfigError
from fopproxy.policy import DEFAULT_PROFILE, PROFILES, SuiteSelection, select_suites
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


@dataclass(frozen=True)
class HttpConfig:
    """`mode: http` settings: what the request-aware pump (fopproxy/http/) may accept and add."""

    max_header_bytes: int = 16384
    forwarded: bool = True
    client_cert_header: bool = True


@dataclass(frozen=True)
class Config:
    listen: TcpAddress
    backend: TcpAddress | UnixAddress
    server_name: str
    tls: TLSConfig
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_connections: int = 10000
    # Whether the file set max_connections: only a user's own number is worth a warning when the
    # open-file limit cuts it short (the default adapts to the limit quietly).
    max_connections_set: bool = False
    workers: int = 1
    backlog: int = 1024
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    mode: Mode = "tcp"
    http: HttpConfig = field(default_factory=HttpConfig)
    source: Path | None = None


T = TypeVar("T")


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


def parse_config(raw: object, base_dir: Path, source: Path | None = None) -> Config:
    """Turn a parsed YAML document into a Config, or raise ConfigError listing every problem."""
    p = _Problems()
    top = p.mapping(
        raw,
        "",
        (
            "listen", "backend", "server_name", "tls", "timeouts", "max_connections",
            "workers", "backlog", "logging", "metrics", "mode", "http",
        ),
    )
    if raw is None:
        p.add("(top level)", "the file is empty; listen, backend, server_name and tls are required")

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

    mode: Mode = p.typed(top, "mode", "", _mode, "tcp") or "tcp"
    http = _parse_http(p, top.get("http"))

    if p.lines:
        raise ConfigError(p.lines)
    # Every getter that returned None added a problem, so none of these is None here.
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
        mode=mode,
        http=http,
        source=source,
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
            "session_tickets",
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
    if selection is None or p.lines:
        return None
    assert reload_grace is not None  # a bad value added a problem above
    return TLSConfig(selection, tuple(certificates), reload_interval, reload_grace, tickets)


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
