"""Embedding outside the request path: a worker process embeds the rows that requests leave.

The application installs the flush hook with ``mode="worker"``: its requests write rows
without calling the provider (no embedder needed there) and each commit that left rows sends
``NOTIFY vecorm_embed, '<table>'``. One or more workers embed them::

    vecorm.install(SessionLocal, mode="worker")                # in the app

    worker = Worker(engine, [Document], embedder=OpenAIEmbedder())   # in the worker process
    worker.run()                      # until worker.stop(), or SIGTERM under `vecorm worker`

A worker ``LISTEN``s on its own connection and, when woken, claims the notified tables' stale
rows in batches exactly as :func:`vecorm.embedding.backfill.backfill` does (``SELECT ... FOR
UPDATE SKIP LOCKED``, embed, one UPDATE, COMMIT per batch), then waits again. So:

* several workers (and a backfill) share the work: a claimed row is locked until its vector
  is committed, and the others skip it; no row is embedded twice;
* a wake-up from the flush hook looks only for the rows it left, whose digest it set to NULL
  (the old vector stays searchable meanwhile): an index-free scan of two NULL tests, not a
  hash of every row's text (70-80 ms against 470-520 ms per wake-up at 200,000 short rows);
* rows written without the hook (COPY, raw SQL, another service) are found by a pass over
  every model each ``poll_interval`` seconds (and at start), which compares every row's text
  with its digest, or at once with the optional trigger of :mod:`vecorm.embedding.notify`
  (whose wake-up does that comparison on its table);
* a provider failure rolls back the batch in flight, whose rows stay stale; the worker logs it
  and retries after ``retry_delay`` seconds, doubling up to ``max_retry_delay``;
* a text the provider refuses (too long, empty, an HTTP 400) is found by splitting its batch
  and left stale, logged, until it changes, while the rest of its table is embedded
  (``health().rows_rejected``); one bad row never holds back the others;
* a lost connection is logged and reopened (and the poll covers what was missed meanwhile);
* :meth:`Worker.stop` (or SIGTERM/SIGINT under ``vecorm worker``) lets the batch in flight
  commit, then :meth:`Worker.run` returns.

Logger ``vecorm.worker``: starts, passes that embedded rows, failures and stops.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from vecorm.embedding.backfill import (
    BackfillResult,
    Counters,
    EmbeddingColumns,
    checked_batch_size,
    columns_of,
    count_stale,
    sweep,
)
from vecorm.embedding.embedders.base import Embedder
from vecorm.embedding.health import WorkerHealth, write_heartbeat
from vecorm.embedding.listener import Listener, require_psycopg
from vecorm.embedding.notify import CHANNEL, MARKED
from vecorm.errors import ConfigurationError, EmbeddingError
from vecorm.schema.config import search_config
from vecorm.schema.embeddings import embedding_slots

__all__ = ["Worker"]

log = logging.getLogger("vecorm.worker")

#: Seconds between heartbeat writes during a pass (every pass and wait writes one too).
HEARTBEAT_EVERY = 1.0
#: Longest wait between looks at a ``stop`` event passed to :meth:`Worker.run`.
STOP_CHECK = 1.0


@dataclass(frozen=True)
class _Target:
    """One embedding a worker keeps (a model's, or one of ``SearchConfig.embeddings``): its
    columns, provider and batch size."""

    name: str
    columns: EmbeddingColumns
    embedder: Embedder
    size: int

    @property
    def table(self) -> str:
        return self.columns.table.name


class Worker:
    """Embeds the stale rows of ``models``, woken by ``NOTIFY``, until stopped.

    ``embedder`` serves every model (default: each model's ``SearchConfig(embedder=...)``);
    ``batch_size`` rows are claimed per transaction (default: the provider's batch size).
    ``heartbeat`` is a file rewritten with :meth:`health` while it runs (see
    :mod:`vecorm.embedding.health`). Several workers may run at once, on any machines::

        worker = Worker(engine, [Document, Note], embedder=LocalEmbedder(), poll_interval=60)
        threading.Thread(target=worker.run).start()
        ...
        worker.stop()          # the batch in flight is committed, then run() returns
    """

    def __init__(
        self,
        engine: Engine,
        models: Iterable[type[Any]],
        *,
        embedder: Embedder | None = None,
        batch_size: int | None = None,
        poll_interval: float = 30.0,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
        heartbeat: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(engine, Engine):
            raise ConfigurationError(
                f"Worker needs a synchronous Engine, not {type(engine).__name__} (for an "
                "AsyncEngine, pass its .sync_engine's URL to vecorm.create_engine)"
            )
        if not poll_interval > 0:
            raise ConfigurationError(f"poll_interval must be above 0 seconds, not {poll_interval}")
        if not 0 < retry_delay <= max_retry_delay:
            raise ConfigurationError(
                f"retry_delay ({retry_delay}) must be above 0 and at most max_retry_delay "
                f"({max_retry_delay})"
            )
        self.engine = engine
        self.poll_interval = float(poll_interval)
        self.retry_delay = float(retry_delay)
        self.max_retry_delay = float(max_retry_delay)
        self.heartbeat = Path(heartbeat) if heartbeat is not None else None
        self._targets = _targets(models, embedder, batch_size)
        require_psycopg(engine)
        self._counters = Counters()
        self._stop = threading.Event()
        self._external: threading.Event | None = None
        self._listener: Listener | None = None
        self._alive = False
        self._started_at: datetime | None = None
        self._caught_up_at: datetime | None = None
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        self._beaten = 0.0
        self._current = ""
        self._listened = False

    @property
    def models(self) -> list[str]:
        """The names of the models it embeds."""
        return [target.name for target in self._targets]

    # --- running ---------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Embed what is stale, then what notifications and the poll bring, until
        :meth:`stop` (or ``stop.set()``) — the batch in flight is committed first.

        Failures are logged and retried, never raised. A stopped worker does not run again.
        """
        self._external = stop
        listener = Listener(self.engine)
        self._listener = listener
        self._alive = True
        self._started_at = _now()
        log.info(
            "vecorm worker: embedding %s; listening on %r, a full pass every %g s",
            ", ".join(self.models),
            CHANNEL,
            self.poll_interval,
        )
        try:
            self._loop(listener)
        finally:
            self._alive = False
            self._listener = None
            listener.dispose()
            self._beat(force=True)
            log.info(
                "vecorm worker: stopped (%d rows embedded in %d batches)",
                self._counters.embedded,
                self._counters.batches,
            )

    def run_once(self) -> BackfillResult:
        """One pass over every model: claim, embed and commit what is stale (rows other
        transactions hold locked are skipped). A model that fails does not stop the others;
        the first failure is raised at the end. ``worker.run_once().embedded``
        """
        return self._pass(self._targets, full=True)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in flight (from any thread, or a signal
        handler)."""
        self._stop.set()
        listener = self._listener
        if listener is not None:
            listener.wake()

    def _loop(self, listener: Listener) -> None:
        delay = 0.0
        payloads: set[str] | None = None  # what the last wake-up brought; None: every model
        next_poll = 0.0
        while not self._stopping():
            self._ensure_listening(listener)
            full = payloads is None or time.monotonic() >= next_poll
            notified = {} if full else self._notified(payloads or set())
            targets = self._targets if full else [t for t in self._targets if t.table in notified]
            if targets:
                try:
                    self._pass(targets, full=full, marked=notified)
                except Exception as exc:
                    delay = min(self.max_retry_delay, delay * 2) if delay else self.retry_delay
                    self._failed(exc, f"the batch's rows stay stale; retrying in {delay:g} s")
                    self._beat(force=True)
                    self._wait(listener, delay)  # what it brings is covered by the retry
                    payloads = None
                    continue
                delay = 0.0
                if full:
                    next_poll = time.monotonic() + self.poll_interval
            self._beat(force=True)
            if self._stopping():
                break
            payloads = self._wait(listener, max(0.0, next_poll - time.monotonic()))

    def _pass(
        self, targets: Sequence[_Target], *, full: bool, marked: Mapping[str, bool] | None = None
    ) -> BackfillResult:
        """Sweep ``targets``; a table ``marked`` maps to true was notified by flush hooks
        only, whose rows have a NULL digest: those are all the pass looks for."""
        counters = self._counters
        before = (counters.embedded, counters.batches, counters.calls)
        started = time.perf_counter()
        failure: tuple[str, Exception] | None = None
        with Session(self.engine) as session:
            for target in targets:
                try:
                    sweep(
                        session,
                        target.columns,
                        target.embedder,
                        target.size,
                        counters,
                        skip_locked=True,
                        stop=self._between_batches,
                        marked_only=bool(marked and marked.get(target.table)),
                    )
                except Exception as exc:  # the other models still get their turn
                    failure = failure or (target.name, exc)
                if self._stopping():
                    break
            else:
                if full and failure is None:
                    self._caught_up_at = _now()
        if failure is not None:
            self._current, error = failure
            raise error
        result = BackfillResult(
            counters.embedded - before[0],
            counters.batches - before[1],
            counters.calls - before[2],
            time.perf_counter() - started,
        )
        if result.embedded:
            log.info(
                "vecorm worker: embedded %d rows of %s in %d batches (%d provider calls, %.2f s)",
                result.embedded,
                ", ".join(target.name for target in targets),
                result.batches,
                result.calls,
                result.seconds,
            )
        return result

    def _notified(self, payloads: set[str]) -> dict[str, bool]:
        """The notified tables of this worker's models, each mapped to whether only flush
        hooks notified it (``marked:<table>``: look for the rows they marked) rather than a
        trigger or another writer (``<table>``: compare every row's text). An empty payload
        names them all."""
        tables = {target.table for target in self._targets}
        if "" in payloads:
            return dict.fromkeys(tables, False)
        found: dict[str, bool] = {}
        for payload in payloads:
            if payload in tables:
                found[payload] = False
            elif payload.startswith(MARKED) and payload[len(MARKED) :] in tables:
                found.setdefault(payload[len(MARKED) :], True)
        return found

    def _ensure_listening(self, listener: Listener) -> None:
        if listener.listening:
            return
        try:
            listener.listen()
        except Exception as exc:
            self._failed(exc, f"cannot LISTEN; polling every {self.poll_interval:g} s until it can")
            return
        if self._listened:
            log.info("vecorm worker: listening on %r again", CHANNEL)
        self._listened = True

    def _wait(self, listener: Listener, timeout: float) -> set[str] | None:
        """Notified tables, or ``None`` (timeout, stop, or a lost connection: poll next)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = max(0.0, deadline - time.monotonic())
                slice_ = remaining if self._external is None else min(remaining, STOP_CHECK)
                tables = listener.wait(slice_)
                if tables is not None or self._stopping() or slice_ >= remaining:
                    return tables
        except Exception as exc:
            self._failed(exc, "lost the LISTEN connection; reconnecting")
            return None

    def _between_batches(self) -> bool:
        """Asked by the sweep after each committed batch: whether to stop there."""
        self._beat()
        return self._stopping()

    def _stopping(self) -> bool:
        return self._stop.is_set() or (self._external is not None and self._external.is_set())

    def _failed(self, exc: BaseException, then: str) -> None:
        cause = exc.__cause__ if isinstance(exc, EmbeddingError) and exc.__cause__ else exc
        lines = str(cause).strip().splitlines()
        detail = f"{type(cause).__name__}: {lines[0] if lines else ''}".rstrip(": ")
        if isinstance(exc, EmbeddingError):
            detail = f"embedding {self._current} failed: {detail}"
        self._last_error = detail
        self._last_error_at = _now()
        log.warning("vecorm worker: %s; %s", detail, then)

    # --- health ----------------------------------------------------------------------------

    def health(self, *, backlog: bool = True) -> WorkerHealth:
        """How the worker is doing; with ``backlog``, the stale rows per model are counted in
        the database (one query per model). ``worker.health().backlog  # {'Document': 0}``"""
        counters = self._counters
        last_batch = counters.last_batch
        listener = self._listener
        return WorkerHealth(
            alive=self._alive,
            listening=listener is not None and listener.listening,
            pid=os.getpid(),
            updated_at=_now(),
            started_at=self._started_at,
            last_batch_at=datetime.fromtimestamp(last_batch, UTC) if last_batch else None,
            caught_up_at=self._caught_up_at,
            rows_embedded=counters.embedded,
            batches=counters.batches,
            calls=counters.calls,
            last_error=self._last_error,
            last_error_at=self._last_error_at,
            backlog=self.backlog() if backlog else None,
            rows_rejected=len(counters.rejected),
        )

    def backlog(self) -> dict[str, int]:
        """Stale rows per model, counted now (what :func:`~vecorm.embedding.backfill.stale_count`
        counts)."""
        with Session(self.engine) as session:
            return {
                target.name: count_stale(session, target.columns, target.embedder.model_name)
                for target in self._targets
            }

    def _beat(self, *, force: bool = False) -> None:
        """Rewrite the heartbeat file (at most once per :data:`HEARTBEAT_EVERY` unless forced)."""
        if self.heartbeat is None:
            return
        now = time.monotonic()
        if not force and now - self._beaten < HEARTBEAT_EVERY:
            return
        self._beaten = now
        try:
            write_heartbeat(self.heartbeat, self.health(backlog=False))
        except OSError as exc:
            log.warning("vecorm worker: cannot write the heartbeat %s: %s", self.heartbeat, exc)


def _targets(
    models: Iterable[type[Any]], embedder: Embedder | None, batch_size: int | None
) -> list[_Target]:
    targets = []
    for model in models:
        config = search_config(model)
        for slot in embedding_slots(model):
            columns = columns_of(model, slot.attribute)
            # An added embedding's own embedder first; else the worker's, else the model's.
            own = None if slot.is_default else (config.embeddings or {})[slot.attribute].embedder
            provider = own or embedder or config.embedder
            if provider is None:
                raise ConfigurationError(
                    f"no embedder for {columns.owner}: pass Worker(..., embedder=...) (vecorm "
                    "worker --embedder) or set SearchConfig(embedder=...)"
                )
            size = checked_batch_size(columns, provider, batch_size)
            targets.append(_Target(columns.owner, columns, provider, size))
    if not targets:
        raise ConfigurationError("a Worker needs at least one searchable model")
    return targets


def _now() -> datetime:
    return datetime.now(UTC)
