"""The frozen configuration of one `outbound:` entry, as `config.py` parses it.

Plain data only: nothing here opens a file or a socket. The global `timeouts` are already folded
in (an entry's own value wins), so nothing downstream needs to know where a value came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fopproxy.certs import CertificateSource
from fopproxy.config import TcpAddress
from fopproxy.policy import SuiteSelection

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
