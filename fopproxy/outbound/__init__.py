"""Outbound: a local plain-TCP listener whose connections fopproxy carries to a TLS server.

The client half of the Card FOP rules: the legacy app talks plain TCP to a loopback port, and
fopproxy makes the call to Google over TLS >= 1.2 with the profile's suites only, verifying the
chain and the hostname (ghostunnel's client mode). An entry's frozen config is
`config.OutboundConfig`. Modules: `context` (policy, build and self-check of the client
SSLContext), `material` (trust and client-certificate files, hot reload), `reasons` (bounded
failure labels), `stats`, `pump` (one connection), `service` (listeners and drain),
`collector` (Prometheus families), `audit` (`fopproxy check`).
"""
