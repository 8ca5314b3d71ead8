"""``vecorm worker`` as a real process: it embeds what a worker-mode app writes, stops on
SIGTERM after committing the batch in flight (exit 0), and ``--check`` judges its heartbeat."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import URL, create_engine, insert, text
from sqlalchemy.orm import sessionmaker

import vecorm
from tests.e2e.conftest import url_text
from tests.e2e.test_cli import invoke
from vecorm.embedding.events import install, uninstall
from vecorm.embedding.health import read_heartbeat

SOURCE = Path(vecorm.__file__).resolve().parents[1]

MODELS = '''
import os
import signal

from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vecorm
from vecorm.embedding.embedders import HashingEmbedder


class Base(DeclarativeBase):
    pass


class Product(vecorm.Searchable, Base):
    __tablename__ = "products"
    __vecorm__ = vecorm.SearchConfig(
        fields=("name",), dimensions=16, embedder=HashingEmbedder(dimensions=16)
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class TermOnFirstCall:
    """Sends its own process SIGTERM while it embeds the first batch."""

    dimensions = 16
    model_name = "vecorm-hashing-16"
    max_batch_size = 256

    def embed(self, texts):
        if not getattr(self, "sent", False):
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return HashingEmbedder(dimensions=16).embed(texts)


terminating = TermOnFirstCall()
'''


@pytest.fixture
def project(vecorm_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A models module importable here and by the worker process; its table created."""
    name = f"worker_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    models = __import__(name)
    engine = vecorm.create_engine(vecorm_url)
    models.Base.metadata.create_all(engine)
    engine.dispose()
    yield name
    sys.modules.pop(name, None)


def start_worker(url: URL, *args: str) -> subprocess.Popen[str]:
    command = "from vecorm.tools.cli import main; main(prog_name='vecorm')"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SOURCE), os.getcwd()])}
    return subprocess.Popen(
        [sys.executable, "-c", command, "worker", *args, "--database-url", url_text(url)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_worker(url: URL, project: str, heartbeat: Path) -> Result:
    """``vecorm worker MODEL --check`` in this process."""
    return invoke(
        "worker",
        f"{project}:Product",
        "--database-url",
        url_text(url),
        "--heartbeat",
        str(heartbeat),
        "--check",
    )


def counts(url: URL) -> tuple[int, int]:
    """(rows embedded, rows)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        done = conn.scalar(text("SELECT count(*) FROM products WHERE embedding IS NOT NULL"))
        total = conn.scalar(text("SELECT count(*) FROM products"))
    engine.dispose()
    return int(done or 0), int(total or 0)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    started, pause = time.monotonic(), threading.Event()
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the worker exited ({process.returncode}): {process.communicate()[1]}")
        if time.monotonic() - started > 60:
            process.kill()
            pytest.fail(f"not true within 60 s; worker said: {process.communicate()[1]}")
        pause.wait(0.05)


def test_sigterm_mid_batch_commits_that_batch_and_exits_0(vecorm_url: URL, project: str) -> None:
    engine = create_engine(vecorm_url)
    with engine.begin() as conn:  # raw SQL: no hook, no notification; the first pass finds them
        conn.execute(
            insert(__import__(project).Product.__table__),
            [{"id": i, "name": f"product {i}"} for i in range(30)],
        )
    engine.dispose()
    worker = start_worker(
        vecorm_url,
        f"{project}:Product",
        "--embedder",
        f"{project}:terminating",
        "--batch-size",
        "10",
    )
    try:
        _, stderr = worker.communicate(timeout=120)
    finally:
        worker.kill()
    assert worker.returncode == 0, stderr
    assert "SIGTERM received; stopping after the batch in flight" in stderr
    assert "stopped (10 rows embedded in 1 batches)" in stderr
    assert "Traceback" not in stderr
    assert counts(vecorm_url) == (10, 30)


def test_the_worker_embeds_what_the_app_leaves_and_check_judges_it(
    vecorm_url: URL, project: str, tmp_path: Path
) -> None:
    beat = tmp_path / "worker.json"
    worker = start_worker(vecorm_url, f"{project}:Product", "--heartbeat", str(beat))
    try:
        wait_for(lambda: beat.exists() and read_heartbeat(beat).caught_up_at is not None, worker)
        engine = vecorm.create_engine(vecorm_url)
        app = sessionmaker(engine)
        install(app, mode="worker")
        with app() as session:
            session.add_all(__import__(project).Product(id=i, name=f"new {i}") for i in range(5))
            session.commit()
        uninstall(app)
        engine.dispose()
        wait_for(lambda: counts(vecorm_url) == (5, 5), worker)  # the poll is 30 s away

        check = check_worker(vecorm_url, project, beat)
        assert check.exit_code == 0, check.output
        report = json.loads(check.stdout)
        assert (report["healthy"], report["problems"], report["backlog"]) == (
            True,
            [],
            {"Product": 0},
        )
        assert report["worker"]["rows_embedded"] == 5 and report["worker"]["listening"]

        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    finally:
        worker.kill()
    assert worker.returncode == 0, stderr
    assert "embedded 5 rows of Product" in stderr

    after = check_worker(vecorm_url, project, beat)
    assert after.exit_code == 1
    assert json.loads(after.stdout)["problems"][0].startswith("the worker (pid ")
    missing = check_worker(vecorm_url, project, tmp_path / "none.json")
    assert missing.exit_code == 1
    assert "no worker heartbeat at" in json.loads(missing.stdout)["problems"][0]


def test_check_needs_the_heartbeat(vecorm_url: URL, project: str) -> None:
    result = invoke(
        "worker", f"{project}:Product", "--check", "--database-url", url_text(vecorm_url)
    )
    assert result.exit_code == 2
    assert "--check reads the running worker's heartbeat" in result.output
