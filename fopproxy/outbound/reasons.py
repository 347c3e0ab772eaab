"""Why an outbound connection was refused: a small fixed label set, for metrics and the log.

Every label is exported at 0 from the start (alerts see a series before the first failure).
"""

from __future__ import annotations

import ssl

from fopproxy.relay import classify_connect_error as classify_backend_connect_error

HANDSHAKE_ERROR_REASONS = (
    "hostname_mismatch",  # the certificate does not name server_name
    "untrusted_certificate",  # no chain to the trust (self-signed, unknown CA)
    "expired_certificate",
    "invalid_certificate",  # any other verification failure (not yet valid, bad signature, ...)
    "protocol_version",  # the server offers no TLS version of the profile (TLS 1.1 ...)
    "no_shared_cipher",  # no suite or group of the profile in common
    "client_certificate_rejected",  # the server wanted a (different) client certificate
    "peer_closed",  # the server closed or reset during the handshake
    "timeout",  # the handshake did not finish within timeouts.handshake
    "connect_refused",
    "connect_timeout",
    "connect_unreachable",
    "dns",
    "other",
)

# X509_V_ERR_* codes (openssl/x509_vfy.h) -> label; any other verify code: invalid_certificate.
_VERIFY_CODES = {
    10: "expired_certificate",  # CERT_HAS_EXPIRED
    62: "hostname_mismatch",  # HOSTNAME_MISMATCH
    63: "hostname_mismatch",  # EMAIL_MISMATCH
    64: "hostname_mismatch",  # IP_ADDRESS_MISMATCH
    2: "untrusted_certificate",  # UNABLE_TO_GET_ISSUER_CERT
    18: "untrusted_certificate",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "untrusted_certificate",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "untrusted_certificate",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "untrusted_certificate",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    27: "untrusted_certificate",  # CERT_UNTRUSTED
}

# OpenSSL reason codes -> label.
_REASONS = dict.fromkeys(
    (
        "UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW", "WRONG_SSL_VERSION",
        "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE", "BAD_PROTOCOL_VERSION_NUMBER",
        "TLSV1_ALERT_INAPPROPRIATE_FALLBACK",
    ),
    "protocol_version",
) | dict.fromkeys(
    (
        "NO_SHARED_CIPHER", "NO_CIPHERS_AVAILABLE", "WRONG_CIPHER_RETURNED", "WRONG_CURVE",
        "NO_SUITABLE_KEY_SHARE", "NO_SHARED_GROUPS", "BAD_KEY_SHARE",
        "TLSV1_ALERT_INSUFFICIENT_SECURITY",
    ),
    "no_shared_cipher",
) | dict.fromkeys(
    (
        "SSLV3_ALERT_BAD_CERTIFICATE", "TLSV1_ALERT_UNKNOWN_CA", "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "TLSV1_ALERT_DECRYPT_ERROR",
    ),
    "client_certificate_rejected",
) | {"UNEXPECTED_EOF_WHILE_READING": "peer_closed"}


TLS12_RECORD_VERSION = 0x0303


def classify_handshake_error(
    exc: ssl.SSLError, *, server_answered: bool, server_record_version: int | None = None
) -> str:
    """Map a failed client handshake to a label.

    `server_record_version`: the version field of the server's first record. A server that
    settled on TLS 1.1 or older writes 0x0302 or less there, even when what it sends is only a
    `handshake_failure` alert (it found none of our TLS 1.2 suites usable at TLS 1.1).

    `server_answered`: whether the server's first flight (ServerHello ...) arrived before the
    failure. A bare `handshake_failure` alert as the server's first answer means nothing of our
    ClientHello suited it (suites, groups); the same alert after its first flight is what TLS 1.2
    servers send when they require a client certificate we do not have or they do not accept.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_CODES.get(exc.verify_code, "invalid_certificate")
    reason = exc.reason or ""
    if server_record_version is not None and server_record_version < TLS12_RECORD_VERSION:
        return "protocol_version"
    if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE":
        return "client_certificate_rejected" if server_answered else "no_shared_cipher"
    if isinstance(exc, ssl.SSLEOFError):
        return "peer_closed"
    return _REASONS.get(reason, "other")


# The inbound backend dial's classification (relay.py), in outbound's public reason names.
_CONNECT_REASONS = {
    "dns": "dns",
    "timeout": "connect_timeout",
    "refused": "connect_refused",
    "unreachable": "connect_unreachable",
    "reset": "peer_closed",
    "other": "other",
}


def classify_connect_error(exc: BaseException) -> str:
    return _CONNECT_REASONS[classify_backend_connect_error(exc)]
