"""examples/flask_app over HTTP with Flask's test client, on a database its migration built."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.config import Config
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import URL, create_engine, func, inspect, select, text
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

import vecorm
from tests.e2e.conftest import EXAMPLES, url_text
from vecorm.tools.demo import load_passages


def alembic_config(app: str, url: URL) -> Config:
    config = Config(str(EXAMPLES / app / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url_text(url).replace("%", "%%"))
    config.attributes["configure_logger"] = False  # leave pytest's logging alone
    return config


def test_migration_builds_the_schema_on_a_fresh_database(vecorm_url: URL) -> None:
    config = alembic_config("flask_app", vecorm_url)
    command.upgrade(config, "head")
    engine = create_engine(vecorm_url)
    inspector = inspect(engine)
    columns = {column["name"]: column for column in inspector.get_columns("articles")}
    assert str(columns["embedding"]["type"]) == "VECTOR(384)"
    assert columns["search_vector"]["computed"]["persisted"] is True
    assert {index["name"] for index in inspector.get_indexes("articles")} == {
        "ix_articles_category",
        "ix_articles_embedding_hnsw",
        "ix_articles_search_vector_gin",
    }
    # The models and the migrated database agree: nothing left to generate. If this fails after
    # a change to vecorm's schema, add a revision: `alembic -c examples/flask_app/alembic.ini
    # revision --autogenerate -m "..."` (DATABASE_URL pointing at a database at head).
    command.check(config)
    command.downgrade(config, "base")
    assert not inspect(engine).has_table("articles")
    engine.dispose()


def test_upgrading_an_app_with_rows_fills_the_bm25_statistics(vecorm_url: URL) -> None:
    """0001 is the app before BM25; 0002 adds the statistics and computes them for old rows."""
    from flask_app.models import Article

    config = alembic_config("flask_app", vecorm_url)
    command.upgrade(config, "0001")
    engine = create_engine(vecorm_url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO articles (title, body, category) VALUES (:t, :b, 'ops')"),
            [
                {"t": "Vacuum tuning", "b": "Autovacuum thresholds."},
                {"t": "Replica lag", "b": "Streaming replication falls behind."},
            ],
        )
    command.upgrade(config, "head")
    with Session(engine) as session:
        found = session.execute(Article.text_search("autovacuum thresholds", k=5)).all()
        assert [article.title for article, _ in found] == ["Vacuum tuning"]
    engine.dispose()


@pytest.fixture
def app(vecorm_url: URL) -> Iterator[Flask]:
    from flask_app.app import create_app, search
    from flask_app.models import Article, db

    command.upgrade(alembic_config("flask_app", vecorm_url), "head")
    application = create_app(
        {"SQLALCHEMY_DATABASE_URI": url_text(vecorm_url), "SEARCH_EMBEDDER": "hashing"}
    )
    with application.app_context():
        # A corpus to search, added the way the app's own code would: embedded on commit.
        db.session.add_all(
            Article(title=p.title, body=p.body, category=p.category) for p in load_passages()
        )
        db.session.commit()
        db.session.remove()
    yield application
    search.teardown_app(application)
    with application.app_context():
        db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_new_articles_are_embedded_on_commit(client: FlaskClient) -> None:
    created = client.post(
        "/articles",
        json={
            "title": "Error XJ-4471 in the billing export",
            "body": "Restart the exporter.",
            "category": "support",
            "author": "ops",
        },
    )
    assert created.status_code == 201
    article_id = created.get_json()["id"]
    shown = client.get(f"/articles/{article_id}").get_json()
    assert shown["embedded"] is True and shown["embedding_model"] == "vecorm-hashing-384"

    hits = client.get("/search", query_string={"q": "XJ-4471", "mode": "hybrid"}).get_json()
    assert hits["results"][0]["id"] == article_id
    text_hits = client.get("/search", query_string={"q": "billing exporter", "mode": "text"})
    assert [hit["id"] for hit in text_hits.get_json()["results"]] == [article_id]


def test_semantic_search_returns_distances_in_order(client: FlaskClient) -> None:
    response = client.get("/search", query_string={"q": "pg_repack", "mode": "semantic", "k": 4})
    body = response.get_json()
    assert response.status_code == 200 and body["mode"] == "semantic"
    distances = [hit["distance"] for hit in body["results"]]
    assert len(distances) == 4 and distances == sorted(distances)
    assert all(hit["score"] is None for hit in body["results"])


def test_hybrid_search_finds_exact_terms_semantic_misses(client: FlaskClient) -> None:
    question = "what does SQLSTATE 40P01 mean?"
    semantic = client.get("/search", query_string={"q": question, "mode": "semantic"})
    hybrid = client.get("/search", query_string={"q": question})  # hybrid by default
    assert hybrid.get_json()["mode"] == "hybrid"
    titles = [hit["title"] for hit in hybrid.get_json()["results"]]
    assert titles[0] == "Deadlocks between transactions"
    assert "Deadlocks between transactions" not in [
        hit["title"] for hit in semantic.get_json()["results"]
    ]
    scores = [hit["score"] for hit in hybrid.get_json()["results"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("mode", ["semantic", "hybrid", "text"])
def test_category_filter_applies_in_every_mode(client: FlaskClient, mode: str) -> None:
    response = client.get(
        "/search",
        query_string={"q": "locks and timeouts", "mode": mode, "category": "errors", "k": 10},
    )
    results = response.get_json()["results"]
    assert results and {hit["category"] for hit in results} == {"errors"}


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ({}, "pass the text to search for as ?q="),
        ({"q": "vacuum", "mode": "fuzzy"}, "mode must be one of semantic, hybrid, text"),
        ({"q": "vacuum", "k": "0"}, "k must be between 1 and 50"),
    ],
)
def test_bad_requests_get_json_errors(
    client: FlaskClient, query: dict[str, str], detail: str
) -> None:
    response = client.get("/search", query_string=query)
    assert response.status_code == 400
    assert response.get_json() == {"error": "Bad Request", "detail": detail}


def test_create_app_twice_in_one_process(app: Flask, vecorm_url: URL) -> None:
    """Test suites and reloaders build the app again: the newest app's installation serves
    db.session, and tearing it down hands the hooks back to the first app."""
    from flask_app.app import create_app, search
    from flask_app.models import db

    first = app.extensions["vecorm"]
    again = create_app(
        {"SQLALCHEMY_DATABASE_URI": url_text(vecorm_url), "SEARCH_EMBEDDER": "hashing"}
    )
    second = again.extensions["vecorm"]
    assert first.current is False and second.current is True
    with again.app_context():
        assert vecorm.installed_embedder(db.session()) is second.embedder
    response = again.test_client().get("/search", query_string={"q": "autovacuum", "k": 3})
    assert response.status_code == 200 and len(response.get_json()["results"]) == 3

    assert search.teardown_app(again) is True and "vecorm" not in again.extensions
    restored = app.extensions["vecorm"]
    assert restored.current and vecorm.is_installed(db.session)
    response = app.test_client().get("/search", query_string={"q": "autovacuum", "k": 3})
    assert response.status_code == 200 and len(response.get_json()["results"]) == 3
    assert search.teardown_app(again) is False
    with again.app_context():
        db.engine.dispose()


def test_teardown_uninstalls_the_hooks_and_the_engine_opt_in(vecorm_url: URL) -> None:
    from flask_app.app import create_app, search
    from flask_app.models import Article, db

    command.upgrade(alembic_config("flask_app", vecorm_url), "head")
    application = create_app(
        {"SQLALCHEMY_DATABASE_URI": url_text(vecorm_url), "SEARCH_EMBEDDER": "hashing"}
    )
    with application.app_context():
        engine = db.engine
        # An engine opted out of vecorm's settings gets them back from init_app ...
        vecorm.uninstall_search_settings(engine)
        search.init_app(application, db, embedder=vecorm.HashingEmbedder(384))
        assert vecorm.search_settings_installed(engine)
        # ... and the search runs through the app's own engine with its settings applied.
        probe = select(func.current_setting("hnsw.ef_search")).execution_options(
            **vecorm.search_options(ef_search=123)
        )
        assert db.session.scalar(probe) == "123"
        db.session.add(Article(title="Pager duty", body="Who is on call tonight", category="ops"))
        db.session.commit()
        found = db.session.execute(Article.nearest("on call tonight", k=1)).all()
        assert [article.title for article, _ in found] == ["Pager duty"]
        db.session.remove()

    assert search.teardown_app(application) is True
    assert not vecorm.is_installed(db.session)
    assert not vecorm.search_settings_installed(engine)  # opted out again, as it was
    with application.app_context():
        with pytest.raises(StatementError, match="no embedder"):
            db.session.execute(Article.nearest("on call tonight", k=1)).all()
        db.session.remove()
        vecorm.install_search_settings(engine)
        engine.dispose()


def test_init_app_needs_the_apps_sqlalchemy_first() -> None:
    from flask_app.models import db

    from vecorm.ext.flask import Vecorm

    with pytest.raises(vecorm.ConfigurationError, match=r"call db.init_app\(app\) before"):
        Vecorm(Flask("bare"), db)


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flask_sqlalchemy", None)  # "not installed"
    monkeypatch.delitem(sys.modules, "vecorm.ext.flask", raising=False)
    with pytest.raises(vecorm.ConfigurationError, match=r"pip install 'vecorm\[flask\]'"):
        importlib.import_module("vecorm.ext.flask")
