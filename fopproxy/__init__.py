"""fopproxy: a TLS-terminating sidecar that is compliant with the Card FOP transport rules by construction."""

__version__ = "0.1.0"
