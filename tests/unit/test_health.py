"""A worker's health as a probe judges it: the heartbeat file round trip and the problems."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vecorm.embedding.health import WorkerHealth, read_heartbeat, write_heartbeat

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def health(**changes: object) -> WorkerHealth:
    values: dict[str, object] = {
        "alive": True,
        "listening": True,
        "pid": 42,
        "updated_at": NOW - timedelta(seconds=5),
        "started_at": NOW - timedelta(hours=1),
        "caught_up_at": NOW - timedelta(seconds=20),
        "backlog": {"Document": 0},
    }
    values.update(changes)
    return WorkerHealth(**values)  # type: ignore[arg-type]


def test_the_heartbeat_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "worker.json"
    written = health(last_error="ConnectionError: down", last_error_at=NOW, rows_embedded=7)
    write_heartbeat(path, written)
    assert read_heartbeat(path) == written
    assert json.loads(path.read_text())["updated_at"] == "2025-01-01T11:59:55+00:00"
    assert [entry.name for entry in tmp_path.iterdir()] == ["worker.json"]  # no scratch left


def test_what_is_not_a_heartbeat_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "worker.json"
    with pytest.raises(OSError):
        read_heartbeat(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="no worker heartbeat"):
        read_heartbeat(path)
    path.write_text('{"alive": true}')
    with pytest.raises(ValueError, match="no worker heartbeat"):
        read_heartbeat(path)


def test_a_healthy_worker_has_no_problems() -> None:
    assert health().problems(60, now=NOW) == []
    # rows waiting, but it caught up recently: it is keeping up
    assert health(backlog={"Document": 500}).problems(60, now=NOW) == []


def test_problems_say_what_is_wrong() -> None:
    assert health(alive=False).problems(60, now=NOW) == [
        "the worker (pid 42) stopped at 2025-01-01T11:59:55+00:00"
    ]
    silent = health(updated_at=NOW - timedelta(seconds=90)).problems(60, now=NOW)
    assert silent == [
        "the worker (pid 42) has written no heartbeat for 90 s (more than 60 s): it is stuck or "
        "gone"
    ]
    behind = health(
        backlog={"Document": 3, "Note": 2},
        caught_up_at=NOW - timedelta(seconds=300),
        last_error="embedding Document failed: ConnectionError: down",
    ).problems(60, now=NOW)
    assert behind == [
        "5 rows wait to be embedded and the worker last caught up 300 s ago (more than 60 s); "
        "last error: embedding Document failed: ConnectionError: down"
    ]
    never = health(backlog={"Document": 1}, caught_up_at=None, started_at=None)
    assert "last caught up never" in never.problems(60, now=NOW)[0]
