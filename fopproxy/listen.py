"""Binding a listening TCP socket ourselves, for the TLS listener and the outbound ones alike."""

from __future__ import annotations

import socket

from fopproxy.config import TcpAddress


def bind_tcp(address: TcpAddress, *, reuse_port: bool, backlog: int) -> socket.socket:
    """A non-blocking listening socket on `address`, SO_REUSEPORT for workers where asked.

    Bound here rather than by the event loop so SO_REUSEPORT and dual stack are explicit, not
    defaults: `[::]` serves IPv4 too (IPV6_V6ONLY off), whatever the system's default is.
    """
    infos = socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, socktype, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and address.host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
