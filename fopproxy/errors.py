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


class ComplianceError(FopproxyError):
    """The runtime cannot build a TLS context inside the compliance rules (fail closed)."""
