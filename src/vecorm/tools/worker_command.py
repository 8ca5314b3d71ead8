"""``vecorm worker``: run an embedding worker until SIGTERM/SIGINT, or check one's health.

::

    vecorm worker myapp.models:Document --heartbeat /tmp/vecorm-worker.json
    vecorm worker myapp.models:Document --heartbeat /tmp/vecorm-worker.json --check --max-lag 120

The first signal lets the batch in flight commit and exits 0; a second one interrupts at once.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from sqlalchemy import URL

from vecorm.embedding.embedders.base import Embedder
from vecorm.embedding.health import read_heartbeat
from vecorm.embedding.worker import Worker
from vecorm.engine import create_engine
from vecorm.schema.config import search_config
from vecorm.tools.clitools import load_embedder, load_model

__all__ = ["check_worker", "run_worker"]

log = logging.getLogger("vecorm.worker")
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _worker(
    engine: Any, model_paths: tuple[str, ...], embedder_name: str | None, **options: Any
) -> Worker:
    models = [load_model(path) for path in model_paths]
    embedder: Embedder | None = None
    if embedder_name:
        embedder = load_embedder(embedder_name, dimensions=search_config(models[0]).dimensions)
    return Worker(engine, models, embedder=embedder, **options)


def run_worker(
    url: URL,
    model_paths: tuple[str, ...],
    *,
    embedder_name: str | None,
    batch_size: int | None,
    poll_interval: float,
    heartbeat: str | None,
) -> None:
    """Run a worker on ``url`` until SIGTERM or SIGINT, logging to stderr."""
    engine = create_engine(url)
    try:
        worker = _worker(
            engine,
            model_paths,
            embedder_name,
            batch_size=batch_size,
            poll_interval=poll_interval,
            heartbeat=heartbeat,
        )
        with _logging_to_stderr(), _stopped_by_signals(worker.stop):
            worker.run()
    finally:
        engine.dispose()


def check_worker(
    url: URL,
    model_paths: tuple[str, ...],
    *,
    embedder_name: str | None,
    heartbeat: str,
    max_lag: float,
) -> tuple[dict[str, Any], bool]:
    """The health report of the worker writing ``heartbeat`` (with the backlog counted on
    ``url``), and whether it is healthy."""
    engine = create_engine(url)
    try:
        backlog = _worker(engine, model_paths, embedder_name).backlog()
    finally:
        engine.dispose()
    try:
        health = read_heartbeat(heartbeat)
    except (OSError, ValueError) as exc:
        problems = [
            f"no worker heartbeat at {heartbeat} ({type(exc).__name__}: {exc}); is `vecorm "
            f"worker --heartbeat {heartbeat}` running?"
        ]
        report = {"healthy": False, "problems": problems, "backlog": backlog, "worker": None}
        return report, False
    health = dataclasses.replace(health, backlog=backlog)
    problems = health.problems(max_lag)
    report = {
        "healthy": not problems,
        "problems": problems,
        "backlog": backlog,
        "worker": health.as_dict(),
    }
    return report, not problems


@contextmanager
def _logging_to_stderr() -> Iterator[None]:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


@contextmanager
def _stopped_by_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGTERM and SIGINT call ``stop`` once; the same signal again acts as it did before."""
    previous: dict[int, Any] = {}

    def handle(signum: int, frame: FrameType | None) -> None:
        log.info(
            "vecorm worker: %s received; stopping after the batch in flight",
            signal.Signals(signum).name,
        )
        stop()
        signal.signal(signum, previous[signum])

    for received in _SIGNALS:
        previous[received] = signal.signal(received, handle)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
