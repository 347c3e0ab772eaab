"""Exceptions that carry a user-facing message; the CLI turns each into a line and an exit code."""

from __future__ import annotations


class FopproxyError(Exception):
    """Base of every error fopproxy reports to a user instead of a traceback."""


class ConfigError(FopproxyError):
    """The configuration cannot be used; `problems` holds one `key.path: message` per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class CertificateError(FopproxyError):
    """A certificate or key is unusable (parse error, mismatch, expiry, name coverage, key type)."""


# The next three are also what a rotation looks like while it is still under way (the second file
# of a pair not written yet, a file caught mid-write or mid-replace), so the reload watcher gives
# them a grace period before calling the rotation failed. At start they are as fatal as any other.


class KeyMismatchError(CertificateError):
    """The private key is not the certificate's (different public keys)."""


class CertificateParseError(CertificateError):
    """A certificate or key file is not complete PEM: empty, cut short, or not PEM at all."""


class CertificateReadError(CertificateError):
    """A certificate, key or passphrase file cannot be read (missing, permissions)."""


class ComplianceError(FopproxyError):
    """The runtime cannot build a TLS context inside the compliance rules (fail closed)."""
