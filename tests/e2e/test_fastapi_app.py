"""examples/fastapi_app over HTTP: FastAPI's TestClient and httpx's AsyncClient, async all along."""

from __future__ import annotations

import importlib
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import pytest
from alembic import command
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import URL, create_engine, func, inspect, select
from sqlalchemy.ext.asyncio import async_sessionmaker

import vecorm
from tests.e2e.test_flask_app import alembic_config
from vecorm.embedding.embedders import HashingEmbedder
from vecorm.ext.fastapi import lifespan
from vecorm.tools.demo import load_passages


class RecordingEmbedder:
    """The hashing embedder, counting which path (blocking or async) each call took."""

    dimensions = 384
    model_name = "vecorm-hashing-384"
    max_batch_size = 256

    def __init__(self) -> None:
        self._inner = HashingEmbedder(dimensions=384)
        self.blocking_calls = 0
        self.async_calls = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.blocking_calls += 1
        return self._inner.embed(texts)

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        self.async_calls += 1
        return self._inner.embed(texts)


def test_async_migration_builds_the_schema_on_a_fresh_database(vecorm_url: URL) -> None:
    config = alembic_config("fastapi_app", vecorm_url)
    command.upgrade(config, "head")  # env.py runs it on an AsyncEngine
    engine = create_engine(vecorm_url)
    assert {index["name"] for index in inspect(engine).get_indexes("notes")} == {
        "ix_notes_category",
        "ix_notes_embedding_hnsw",
        "ix_notes_search_vector_gin",
    }
    command.check(config)  # nothing left to generate (see test_flask_app for what to do)
    command.downgrade(config, "base")
    assert not inspect(engine).has_table("notes")
    engine.dispose()


@pytest.fixture
def embedder() -> RecordingEmbedder:
    return RecordingEmbedder()


@pytest.fixture
def app(vecorm_url: URL, embedder: RecordingEmbedder) -> FastAPI:
    from fastapi_app.app import create_app

    command.upgrade(alembic_config("fastapi_app", vecorm_url), "head")
    return create_app(vecorm_url.render_as_string(hide_password=False), embedder=embedder)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:  # runs the lifespan: engine, sessions, hook
        for passage in load_passages():
            response = test_client.post(
                "/notes",
                json={"title": passage.title, "body": passage.body, "category": passage.category},
            )
            assert response.status_code == 201
        yield test_client


def test_notes_are_embedded_on_commit_through_aembed(
    client: TestClient, embedder: RecordingEmbedder
) -> None:
    assert embedder.async_calls == 65 and embedder.blocking_calls == 0  # one note per commit
    created = client.post(
        "/notes", json={"title": "Ticket QX-981", "body": "The VPN drops.", "category": "it"}
    ).json()
    assert created["embedding_model"] == "vecorm-hashing-384"
    assert client.get(f"/notes/{created['id']}").json() == created
    assert client.get("/notes/999999").status_code == 404

    response = client.get("/search", params={"q": "QX-981"})
    assert response.json()["results"][0]["id"] == created["id"]
    # The query text went through aembed too: nothing on the request path blocked.
    assert embedder.blocking_calls == 0


def test_search_modes_and_filters(client: TestClient) -> None:
    semantic = client.get("/search", params={"q": "pg_repack", "mode": "semantic", "k": 3}).json()
    assert semantic["mode"] == "semantic" and len(semantic["results"]) == 3
    distances = [hit["distance"] for hit in semantic["results"]]
    assert distances == sorted(distances)

    hybrid = client.get("/search", params={"q": "what does SQLSTATE 40P01 mean?"}).json()
    assert hybrid["mode"] == "hybrid"
    assert hybrid["results"][0]["title"] == "Deadlocks between transactions"
    assert set(hybrid["results"][0]) == {"id", "title", "category", "distance", "score"}

    text = client.get("/search", params={"q": "autovacuum", "mode": "text"}).json()
    assert text["results"][0]["title"] == "Tuning autovacuum"
    assert all(hit["distance"] is None for hit in text["results"])

    for mode in ("semantic", "hybrid", "text"):
        filtered = client.get(
            "/search", params={"q": "locks", "mode": mode, "category": "errors", "k": 10}
        ).json()
        assert filtered["results"]
        assert {hit["category"] for hit in filtered["results"]} == {"errors"}


@pytest.mark.parametrize(
    "params",
    [{}, {"q": ""}, {"q": "x", "mode": "fuzzy"}, {"q": "x", "k": 0}, {"q": "x", "k": 51}],
)
def test_invalid_queries_are_rejected(client: TestClient, params: dict[str, object]) -> None:
    response = client.get("/search", params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "query"


async def test_with_httpx_async_client(app: FastAPI, embedder: RecordingEmbedder) -> None:
    """The same app driven from this test's own event loop."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            created = await client.post(
                "/notes",
                json={
                    "title": "halfvec storage",
                    "body": "Two bytes per value.",
                    "category": "storage",
                },
            )
            assert created.status_code == 201
            found = await client.get("/search", params={"q": "halfvec", "mode": "hybrid"})
            assert found.json()["results"][0]["id"] == created.json()["id"]
    assert embedder.async_calls == 2 and embedder.blocking_calls == 0


async def test_lifespan_installs_and_shutdown_uninstalls(
    app: FastAPI, embedder: RecordingEmbedder
) -> None:
    from fastapi_app.models import Note

    async with app.router.lifespan_context(app):
        sessions = app.state.sessions
        installation = app.state.vecorm
        assert vecorm.is_installed(sessions) and installation.current
        engine = sessions.kw["bind"].sync_engine
        assert installation.engines == (engine,) and vecorm.search_settings_installed(engine)
        async with sessions() as session:
            # vecorm's search settings reach the app's own engine ...
            probe = select(func.current_setting("hnsw.ef_search")).execution_options(
                **vecorm.search_options(ef_search=77)
            )
            assert await session.scalar(probe) == "77"
            # ... and a text search embeds with the installed embedder, awaiting aembed.
            rows = (await session.execute(Note.nearest("anything at all", k=1))).all()
            assert rows == [] and embedder.async_calls == 1 and embedder.blocking_calls == 0
    assert installation.stopped and not vecorm.is_installed(sessions)


async def test_a_second_app_in_one_process(vecorm_url: URL, app: FastAPI) -> None:
    from fastapi_app.app import create_app

    other = create_app(vecorm_url.render_as_string(hide_password=False), embedder="hashing")
    async with app.router.lifespan_context(app), other.router.lifespan_context(other):
        assert app.state.vecorm.current and other.state.vecorm.current  # factories of their own
        for application in (app, other):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.get("/search", params={"q": "vacuum", "k": 2})
                assert response.status_code == 200
    assert not vecorm.is_installed(app.state.sessions)
    assert not vecorm.is_installed(other.state.sessions)


async def test_lifespans_sharing_one_factory_and_composing(vecorm_async_engine: Any) -> None:
    sessions = async_sessionmaker(vecorm_async_engine)
    first_embedder, second_embedder = HashingEmbedder(384), HashingEmbedder(384)
    seen: list[str] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        seen.append("start")
        yield {"answer": 42}
        seen.append("stop")

    first = FastAPI(lifespan=lifespan(sessions, embedder=first_embedder, app_lifespan=own))
    second = FastAPI(lifespan=lifespan(sessions, embedder=second_embedder))
    async with first.router.lifespan_context(first) as state:
        assert state == {"answer": 42} and seen == ["start"]
        # The newest startup's hooks serve the shared factory ...
        async with second.router.lifespan_context(second), sessions() as session:
            assert vecorm.installed_embedder(session) is second_embedder
        # ... and its shutdown, finding them its own, removed them; the first app's shutdown
        # then finds someone else's (none) and leaves the factory alone.
        assert not vecorm.is_installed(sessions) and not first.state.vecorm.current
    assert seen == ["start", "stop"] and first.state.vecorm.stopped


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # "not installed"
    monkeypatch.delitem(sys.modules, "vecorm.ext.fastapi", raising=False)
    with pytest.raises(vecorm.ConfigurationError, match=r"pip install 'vecorm\[fastapi\]'"):
        importlib.import_module("vecorm.ext.fastapi")
