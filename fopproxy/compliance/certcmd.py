"""`fopproxy cert selfsigned` and `fopproxy cert show`: make and read the files `check` judges."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from fopproxy.certs import parse_chain
from fopproxy.compliance.rules import describe_certificate
from fopproxy.errors import CertificateError
from fopproxy.selfsigned import self_signed, write_pair


def make_self_signed(
    names: list[str], key_type: Literal["ecdsa", "rsa"], out: Path, days: int, *, force: bool
) -> str:
    """Write `<out>/<key_type>.pem` and `.key` (0600); return what to tell the user."""
    cert_path, key_path = out / f"{key_type}.pem", out / f"{key_type}.key"
    if not force:
        for path in (cert_path, key_path):
            if path.exists():
                raise CertificateError(f"{path} exists; pass --force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    issued = self_signed(names, key_type, days=days)
    write_pair(issued, cert_path, key_path)
    info = describe_certificate(issued.certificate)
    return (
        f"wrote {cert_path} and {key_path} (mode 0600)\n"
        f"names:       {', '.join(names)}\n"
        f"key:         {info['key']}\n"
        f"valid until: {issued.certificate.not_valid_after_utc:%Y-%m-%d}\n"
        f"SHA-256 fingerprint (give this to Google to trust the self-signed certificate):\n"
        f"  {info['fingerprint_sha256']}\n"
        f"config:\n"
        f"  - {{cert: {cert_path}, key: {key_path}}}\n"
    )


def show(path: Path) -> str:
    """Subject, names, issuer, validity, key and fingerprint of every certificate in a PEM file."""
    try:
        chain = parse_chain(path.read_bytes())
    except OSError as exc:
        raise CertificateError(f"cannot read {path}: {exc.strerror}") from None
    except CertificateError as exc:
        raise CertificateError(f"{path}: {exc}") from None
    now = datetime.now(UTC)
    blocks = []
    for index, cert in enumerate(chain):
        info = describe_certificate(cert)
        days = (cert.not_valid_after_utc - now).days
        state = "expired" if days < 0 else f"{days} days left"
        role = "leaf" if index == 0 else f"chain #{index}"
        blocks.append(
            f"[{role}]\n"
            f"  subject:     {info['subject']}\n"
            f"  names:       {', '.join(info['names']) or '(none)'}\n"  # type: ignore[arg-type]
            f"  issuer:      {info['issuer']}"
            + ("  (self-signed)" if info["self_signed"] else "")
            + "\n"
            f"  valid:       {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z to "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z ({state})\n"
            f"  key:         {info['key']}\n"
            f"  signature:   {info['signature_hash']}\n"
            f"  serial:      {info['serial']}\n"
            f"  SHA-256:     {info['fingerprint_sha256']}\n"
        )
    return "\n".join(blocks)
