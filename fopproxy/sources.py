"""Where certificates live on disk: the one certificate type the config needs.

Kept apart from certs.py so that loading the config does not pull in cryptography and ctypes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CertificateSource:
    """Where one certificate chain and its key live on disk (paths already absolute)."""

    cert: Path
    key: Path
    passphrase_file: Path | None = None
