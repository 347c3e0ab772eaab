"""fopproxy: a TLS-terminating sidecar, compliant with the Card FOP rules by construction."""

__version__ = "0.1.0"
