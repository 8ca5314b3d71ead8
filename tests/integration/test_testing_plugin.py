"""The pytest plugin: a database per test (made from the template, dropped after), its
fixtures' names, and a project without the ``vecorm[testing]`` extra."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import psycopg
import pytest
from sqlalchemy import URL, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vecorm
from vecorm.engine import libpq_conninfo
from vecorm.testing import FakeEmbedder
from vecorm.testing.server import TestServer, fresh_database


def database_exists(server: TestServer, name: str) -> bool:
    with psycopg.connect(libpq_conninfo(server.base_url), autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def test_fresh_database_has_vector_and_is_dropped(
    vecorm_server: TestServer, vecorm_template: str
) -> None:
    with fresh_database(vecorm_server, vecorm_template) as url:
        assert url.database is not None and url.database.startswith("vecorm_test_")
        engine = vecorm.create_engine(url)
        with engine.connect() as conn:
            assert (
                conn.execute(
                    text("SELECT count(*) FROM pg_extension WHERE extname = 'vector'")
                ).scalar_one()
                == 1
            )
        # An open connection must not keep the database alive.
        kept_open = engine.connect()
        assert database_exists(vecorm_server, url.database)
    assert not database_exists(vecorm_server, url.database)
    kept_open.invalidate()
    engine.dispose()


def test_each_test_gets_its_own_database(vecorm_url: URL, vecorm_template: str) -> None:
    assert vecorm_url.database != vecorm_template
    engine = vecorm.create_engine(vecorm_url)
    with engine.connect() as conn:
        tables = conn.execute(
            text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        ).scalar_one()
    engine.dispose()
    assert tables == 0


def test_fake_embedder_is_deterministic_and_records_calls() -> None:
    embedder = FakeEmbedder(dimensions=32, max_batch_size=2)
    first = embedder.embed(["error 0x80070057", "vacuum"])
    again = embedder.embed(["error 0x80070057"])
    assert embedder.calls == [["error 0x80070057", "vacuum"], ["error 0x80070057"]]
    np.testing.assert_array_equal(first[0], again[0])
    assert embedder.model_name == "vecorm-hashing-32"


def test_the_fake_embedder_fixture(vecorm_fake_embedder: FakeEmbedder) -> None:
    vectors = vecorm_fake_embedder.embed(["vacuum"])
    assert vectors[0].shape == (1536,)
    assert vecorm_fake_embedder.calls == [["vacuum"]]


class Base(DeclarativeBase):
    pass


class Card(vecorm.Searchable, Base):
    __tablename__ = "cards"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=4)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


async def test_async_engine_round_trips_binary_vectors(
    vecorm_async_engine: AsyncEngine, vecorm_async_session: AsyncSession
) -> None:
    async with vecorm_async_engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    vecorm_async_session.add_all(
        [Card(body="a", embedding=[1, 0, 0, 0]), Card(body="b", embedding=[0, 1, 0, 0])]
    )
    await vecorm_async_session.commit()
    nearest = await vecorm_async_session.scalars(
        select(Card.body).order_by(Card.embedding.cosine_distance([0.1, 1, 0, 0]))
    )
    assert nearest.all() == ["b", "a"]
    stored = await vecorm_async_session.scalar(select(Card.embedding).where(Card.body == "a"))
    assert isinstance(stored, np.ndarray)
    np.testing.assert_array_equal(stored, [1, 0, 0, 0])


# --------------------------------------------------------------------------- without the extra

#: Stand-ins that make ``import pytest_postgresql`` / ``import pytest_asyncio`` fail as they
#: do where the packages are not installed.
MISSING = 'raise ModuleNotFoundError("No module named {0!r}", name={0!r})\n'


@pytest.fixture
def bare_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A project directory, and an environment where pytest-postgresql and pytest-asyncio
    cannot be imported and pytest loads only vecorm's plugin."""
    shims = tmp_path / "shims"
    for name in ("pytest_postgresql", "pytest_asyncio"):
        (shims / name).mkdir(parents=True)
        (shims / name / "__init__.py").write_text(MISSING.format(name))
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "test_plain.py").write_text("def test_ok():\n    pass\n")
    (project / "test_database.py").write_text("def test_database(vecorm_url):\n    pass\n")
    (project / "test_async.py").write_text("def test_async(vecorm_async_engine):\n    pass\n")
    tested = Path(vecorm.__file__).parents[1]  # the vecorm under test, not another install
    search_path = [str(shims), str(tested), os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, search_path)),
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",  # no pytest-postgresql plugin, as when absent
    }
    return project, env


def run_pytest(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    plugins = ("-p", "vecorm.testing.plugin", "-p", "no:cacheprovider")
    return subprocess.run(
        [sys.executable, "-m", "pytest", *plugins, *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_project_without_the_extra_still_runs_its_tests(
    bare_project: tuple[Path, dict[str, str]],
) -> None:
    project, env = bare_project
    done = run_pytest(project, env, "test_plain.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_a_fixture_without_its_extra_says_what_to_install(
    bare_project: tuple[Path, dict[str, str]],
) -> None:
    project, env = bare_project
    done = run_pytest(project, env, "test_database.py", "test_async.py")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 errors" in done.stdout
    assert (
        "vecorm's database fixtures (vecorm_url, vecorm_engine ...) need pytest-postgresql: "
        "pip install 'vecorm[testing]'" in done.stdout
    )
    assert (
        "vecorm_async_engine and vecorm_async_session need pytest-asyncio: "
        "pip install pytest-asyncio" in done.stdout
    )
    assert "No module named" not in done.stdout  # the message alone, not the import error


def test_every_fixture_of_the_plugin_is_named_vecorm(
    bare_project: tuple[Path, dict[str, str]],
) -> None:
    project, env = bare_project
    done = run_pytest(project, env, "--fixtures", "-v", "test_plain.py")
    assert done.returncode == 0, done.stdout + done.stderr
    # pytest lists them under a header line; the next section starts with a rule.
    after = done.stdout.split("fixtures defined from vecorm.testing.plugin", 1)[1]
    section = re.split(r"^[-=]{3,}", after.split("\n", 1)[1], maxsplit=1, flags=re.M)[0]
    names = set(re.findall(r"^(\w+)(?: \[\w+ scope\])? -- ", section, flags=re.M))
    assert all(name.startswith("vecorm_") for name in names), names
    assert names == {
        "vecorm_server",
        "vecorm_template",
        "vecorm_url",
        "vecorm_engine",
        "vecorm_session",
        "vecorm_fake_embedder",
        "vecorm_async_engine",
        "vecorm_async_session",
    }
