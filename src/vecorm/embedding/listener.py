"""A connection that ``LISTEN``s for workers: wait for a notification, a wake-up or a timeout.

The connection is one of the engine's own (its ``connect_args`` and events apply), switched to
autocommit, kept for as long as it listens and thrown away afterwards (never returned to the
pool with a ``LISTEN`` on it). Waiting is a ``select()`` on its socket and on a socket pair
that :meth:`Listener.wake` writes to, so another thread or a signal handler ends a wait at
once::

    listener = Listener(engine)
    listener.listen()                      # LISTEN "vecorm_embed"
    tables = listener.wait(30.0)           # {'documents'}, or None after 30 s or a wake()
    listener.close()

Notifications that arrive while nobody waits stay in the socket until the next :meth:`wait`.
A connection the server closed raises ``psycopg.OperationalError`` from :meth:`wait` (the
listener is closed by then); :meth:`listen` again to reconnect.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from typing import Any

import psycopg
from sqlalchemy.engine import Connection, Engine

from vecorm.embedding.notify import CHANNEL
from vecorm.errors import ConfigurationError

__all__ = ["Listener", "require_psycopg"]


def require_psycopg(engine: Engine) -> None:
    """Refuse an engine whose driver is not psycopg 3 (the only one a listener waits on)."""
    if engine.dialect.driver != "psycopg":
        raise ConfigurationError(
            f"a worker listens through psycopg 3, not {engine.dialect.driver!r}: create the "
            "engine with vecorm.create_engine(url) or a postgresql+psycopg:// URL"
        )


class Listener:
    """A dedicated ``LISTEN`` connection on ``engine`` (psycopg 3) for ``channel``.

    ``Listener(engine).listen()``, then :meth:`wait` for table names.
    """

    def __init__(self, engine: Engine, channel: str = CHANNEL) -> None:
        require_psycopg(engine)
        self.engine = engine
        self.channel = channel
        self._connection: Connection | None = None
        self._waker, self._wakened = socket.socketpair()
        for end in (self._waker, self._wakened):
            end.setblocking(False)

    @property
    def listening(self) -> bool:
        """Whether the connection is open and listening."""
        return self._connection is not None

    def listen(self) -> None:
        """Open the connection and ``LISTEN`` (nothing if already listening)."""
        if self._connection is not None:
            return
        connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            quoted = self.engine.dialect.identifier_preparer.quote(self.channel)
            connection.exec_driver_sql(f"LISTEN {quoted}")
        except BaseException:
            _discard(connection)
            raise
        self._connection = connection

    def wait(self, timeout: float) -> set[str] | None:
        """The payloads (table names) of the notifications that arrive within ``timeout``
        seconds; ``None`` when none came before the timeout or a :meth:`wake`.

        Not listening, it waits for the timeout or a wake-up only.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            sockets: list[Any] = [self._wakened]
            driver = self._driver()
            if driver is not None:
                sockets.append(driver.fileno())
            ready, _, _ = select.select(sockets, [], [], remaining)
            if self._wakened in ready:
                self._drain_wakeups()
                return None
            if driver is not None and ready:
                payloads = self._received(driver)
                if payloads:
                    return payloads
                continue  # another message (or the end of the connection, raised next time)
            if time.monotonic() >= deadline:
                return None

    def wake(self) -> None:
        """End the current (or the next) :meth:`wait` now; safe from any thread or a signal
        handler."""
        # closed, or already full of wake-ups: either way the wait ends
        with contextlib.suppress(OSError):
            self._waker.send(b"\0")

    def close(self) -> None:
        """Stop listening: the connection is discarded, not pooled."""
        connection, self._connection = self._connection, None
        if connection is not None:
            _discard(connection)

    def dispose(self) -> None:
        """:meth:`close`, and release the wake-up sockets too."""
        self.close()
        self._waker.close()
        self._wakened.close()

    def _driver(self) -> psycopg.Connection[Any] | None:
        if self._connection is None:
            return None
        driver = self._connection.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        return driver

    def _received(self, driver: psycopg.Connection[Any]) -> set[str]:
        """What the socket brought: the notifications' payloads (consumed)."""
        pgconn = driver.pgconn
        try:
            pgconn.consume_input()
        except psycopg.Error:
            self.close()
            raise
        payloads = set()
        encoding = driver.info.encoding
        while (notification := pgconn.notifies()) is not None:
            payloads.add(notification.extra.decode(encoding, errors="replace"))
        return payloads

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError: nothing more to read
            while self._wakened.recv(4096):
                pass


def _discard(connection: Connection) -> None:
    """Close ``connection`` for good (its session state, ``LISTEN`` included, goes with it)."""
    try:
        connection.invalidate()
    finally:
        connection.close()
