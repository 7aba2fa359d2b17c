"""aiosmtpd's threaded SMTP server on a socket bound before it starts. Imported where a server
starts (the capture server, the bounce receiver), so that a process that only sends never
loads aiosmtpd."""

from __future__ import annotations

import socket
from typing import Any

from aiosmtpd.controller import Controller


class BoundController(Controller):
    """A Controller whose socket is bound when it is made. A port another process holds is an
    OSError (EADDRINUSE) at once, where aiosmtpd alone reports it only after its whole
    ready_timeout; and port 0 is a free port that is ours from the start, where looking one up
    and binding it later leaves a moment for another process to take it."""

    def __init__(self, handler: Any, *, hostname: str, port: int, **kwargs: Any) -> None:
        self.listener = listen(hostname, port)
        super().__init__(handler, hostname=hostname, port=self.listener.getsockname()[1], **kwargs)

    def _create_server(self) -> Any:
        server: Any = self.loop.create_server(
            self._factory_invoker, sock=self.listener, ssl=self.ssl_context
        )
        return server

    def start(self) -> None:
        """Serve in a thread of its own; the socket is closed when that fails."""
        try:
            super().start()
        except BaseException:
            self.listener.close()
            raise

    def stop(self, no_assert: bool = False) -> None:
        """Stop serving and close the socket (the server owns it once it listens)."""
        try:
            super().stop(no_assert=no_assert)
        finally:
            self.listener.close()


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, with SO_REUSEADDR (a restart on the same port is
    not refused while old connections linger). Any address or name the host resolves, IPv4
    or IPv6; "" or "::" is every address, both families where the system allows it."""
    if host in ("", "::") and socket.has_dualstack_ipv6():
        return socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    found = socket.getaddrinfo(
        host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, _type, _proto, _name, address = found[0]
    return socket.create_server(address, family=family)
