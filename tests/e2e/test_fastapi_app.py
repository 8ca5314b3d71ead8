"""examples/fastapi_app over HTTP: FastAPI's TestClient and httpx's AsyncClient, async all along."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import httpx
import numpy as np
import pytest
from alembic import command
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import URL, create_engine, inspect

from tests.e2e.test_flask_app import alembic_config
from vecorm.embedding.embedders import HashingEmbedder
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
