"""A psycopg cursor that records every statement a connection sends, vecorm's own raw ones
(query-time settings, row estimates) included, and an engine whose connections use it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, NamedTuple

import psycopg
import sqlalchemy
from sqlalchemy.engine import URL, Engine


class Sent(NamedTuple):
    sql: str
    params: Any
    pipelined: bool  # sent while the connection was in pipeline mode


class RecordingCursor(psycopg.Cursor[Any]):
    """Appends each statement it executes to :attr:`sent` (clear it before what you count)."""

    sent: ClassVar[list[Sent]] = []

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        pipelined = self.connection.pgconn.pipeline_status != 0
        RecordingCursor.sent.append(Sent(str(query), params, pipelined))
        return super().execute(query, params, **kwargs)


def statements() -> list[str]:
    """The text of every statement recorded so far."""
    return [sent.sql for sent in RecordingCursor.sent]


@contextmanager
def recording_engine(
    url: URL, create: Callable[..., Engine] = sqlalchemy.create_engine, **kwargs: Any
) -> Iterator[Engine]:
    """An engine made by ``create`` whose connections record through :class:`RecordingCursor`."""
    engine = create(url, connect_args={"cursor_factory": RecordingCursor}, **kwargs)
    try:
        yield engine
    finally:
        engine.dispose()
