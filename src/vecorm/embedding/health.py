"""What a worker reports about itself: :class:`WorkerHealth`, its heartbeat file, and the
judgement a health check makes of it.

A running :class:`vecorm.embedding.worker.Worker` given ``heartbeat=path`` rewrites that file
(atomically, JSON) after every batch (at most once a second), every pass and every wait, so at
least once per poll interval while it lives, and one last time with ``"alive": false`` when it
stops. A probe reads it back, adds the backlog counted in the database, and asks for
:meth:`WorkerHealth.problems`::

    health = read_heartbeat("/run/vecorm/worker.json")
    health.problems(max_lag=120.0)    # [] when healthy, else sentences saying what is wrong
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["WorkerHealth", "read_heartbeat", "write_heartbeat"]

_MOMENTS = ("started_at", "updated_at", "last_batch_at", "caught_up_at", "last_error_at")


@dataclass(frozen=True)
class WorkerHealth:
    """A worker's state at ``updated_at``.

    ``caught_up_at`` is when a pass over every model last ended with nothing left that it could
    claim; ``backlog`` is the stale rows per model (``None`` when not counted).
    ``worker.health().rows_embedded``
    """

    alive: bool
    listening: bool
    pid: int
    updated_at: datetime
    started_at: datetime | None = None
    last_batch_at: datetime | None = None
    caught_up_at: datetime | None = None
    rows_embedded: int = 0
    batches: int = 0
    calls: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None
    backlog: Mapping[str, int] | None = field(default=None)
    #: Rows whose text the provider refused: left stale until their text changes.
    rows_rejected: int = 0

    @property
    def waiting(self) -> int | None:
        """The backlog's total, or ``None`` when it was not counted."""
        return None if self.backlog is None else sum(self.backlog.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 strings in UTC."""
        document = asdict(self)
        for name in _MOMENTS:
            moment = document[name]
            document[name] = moment.isoformat() if moment is not None else None
        document["backlog"] = dict(self.backlog) if self.backlog is not None else None
        return document

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> WorkerHealth:
        """The inverse of :meth:`as_dict` (unknown keys ignored)."""
        values = {key: document[key] for key in cls.__dataclass_fields__ if key in document}
        for name in _MOMENTS:
            if values.get(name) is not None:
                values[name] = datetime.fromisoformat(values[name])
        return cls(**values)

    def problems(self, max_lag: float, *, now: datetime | None = None) -> list[str]:
        """What is wrong, as sentences; empty when the worker is healthy.

        Unhealthy: it stopped; it wrote nothing for ``max_lag`` seconds (stuck or killed); or
        rows are waiting (``backlog``) and it has not caught up for ``max_lag`` seconds (the
        provider is failing, or it cannot keep up). Choose ``max_lag`` above the poll interval.
        """
        moment = now if now is not None else datetime.now(UTC)
        found: list[str] = []
        if not self.alive:
            found.append(f"the worker (pid {self.pid}) stopped at {self.updated_at.isoformat()}")
            return found
        silent = (moment - self.updated_at).total_seconds()
        if silent > max_lag:
            found.append(
                f"the worker (pid {self.pid}) has written no heartbeat for {silent:.0f} s "
                f"(more than {max_lag:g} s): it is stuck or gone"
            )
        waiting = self.waiting
        if waiting:
            since = self.caught_up_at or self.started_at
            lag = (moment - since).total_seconds() if since is not None else None
            if lag is None or lag > max_lag:
                when = f"{lag:.0f} s ago" if lag is not None else "never"
                error = f"; last error: {self.last_error}" if self.last_error else ""
                found.append(
                    f"{waiting} rows wait to be embedded and the worker last caught up {when} "
                    f"(more than {max_lag:g} s){error}"
                )
        return found


def write_heartbeat(path: str | os.PathLike[str], health: WorkerHealth) -> None:
    """Replace ``path`` with ``health`` as JSON, atomically (a reader never sees half a file)."""
    target = Path(path)
    descriptor, scratch = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(descriptor, "w") as stream:
            json.dump(health.as_dict(), stream)
        os.replace(scratch, target)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


def read_heartbeat(path: str | os.PathLike[str]) -> WorkerHealth:
    """The :class:`WorkerHealth` a worker wrote to ``path`` (``OSError`` / ``ValueError`` if
    there is none or it is not one)."""
    document = json.loads(Path(path).read_text())
    if not isinstance(document, dict):
        raise ValueError(f"{path} holds no worker heartbeat")
    try:
        return WorkerHealth.from_dict(document)
    except TypeError as exc:
        raise ValueError(f"{path} holds no worker heartbeat: {exc}") from exc
