"""Bounded connections for the agent's public port: `uvicorn fastapi_app:app --http
agent.connections:GuardedH11Protocol` (startup.sh passes it).

Without a token, anyone who reaches the port can open connections. uvicorn alone keeps a
connection that never sends a request, or sends half of one, open for good, and counts them
against the process's open files (1,024 by default): 1,100 idle connections made the agent
unreachable. Here:

- A connection must complete a request's headers within CONNECTION_TIMEOUT seconds (default 5)
  of opening, or of its previous response; otherwise it is closed. A TLS handshake must finish
  within the same time (asyncio's own default is 60 s).
- At most MAX_CONNECTIONS connections (default 500) are open: a new one beyond that closes the
  oldest connection that is waiting for a request (never one whose request is being served),
  so a health check always gets in. startup.sh raises the open-file limit far above it.

Both settings come from the environment (and so from the systemd unit), read once at import.
"""

from __future__ import annotations

import asyncio
import asyncio.constants
import logging
import os

from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("agent.connections")


def _setting(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        raise SystemExit(f"agent: configuration error: {name} must be a number") from None
    if value <= 0:
        raise SystemExit(f"agent: configuration error: {name} must be > 0")
    return value


CONNECTION_TIMEOUT = _setting("CONNECTION_TIMEOUT", 5.0)
MAX_CONNECTIONS = int(_setting("MAX_CONNECTIONS", 500))

# asyncio reads this when each TLS connection is accepted; uvicorn passes no timeout of its own.
asyncio.constants.SSL_HANDSHAKE_TIMEOUT = CONNECTION_TIMEOUT


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers and a connection cap
    that sheds idle connections first."""

    _last_warning = float("-inf")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._waiting_since = self.loop.time()
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()
        if len(self.connections) > MAX_CONNECTIONS:
            self._shed()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._serving():
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._waiting_since = self.loop.time()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -- the deadline ------------------------------------------------------------------------

    def _serving(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(CONNECTION_TIMEOUT, self._too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()  # type: ignore[union-attr]
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self._serving() and not self.transport.is_closing():
            self.transport.close()

    # -- the cap -----------------------------------------------------------------------------

    def _shed(self) -> None:
        """Close the connection that has waited longest for a request; this one if none waits."""
        waiting = [
            c
            for c in self.connections
            if isinstance(c, GuardedH11Protocol)
            and c is not self
            and not c._serving()
            and not c.transport.is_closing()  # closed already, not yet gone from the set
        ]
        victim = min(waiting, key=lambda c: c._waiting_since) if waiting else self
        victim.transport.close()
        now = self.loop.time()
        if now - GuardedH11Protocol._last_warning > 10:  # once per 10 s under a flood
            GuardedH11Protocol._last_warning = now
            logger.warning(
                "over MAX_CONNECTIONS=%d open connections: closing those idle the longest",
                MAX_CONNECTIONS,
            )
