"""A Flask app whose articles are embedded on commit and searchable over HTTP.

    GET  /search?q=...&mode=semantic|hybrid|text&category=...&k=5   -> JSON results
    POST /articles {"title", "body", "category", "author"}           -> 201, embedded on commit
    GET  /articles/<id>                                              -> the article

Run it (an embedded PostgreSQL is not started for you here: give it a database)::

    cd examples
    alembic -c flask_app/alembic.ini upgrade head            # with DATABASE_URL set
    flask --app flask_app.app run
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, abort, jsonify, request
from sqlalchemy import Select, select
from werkzeug.exceptions import HTTPException

from vecorm.embedders import choose_embedder
from vecorm.engine import normalize_url
from vecorm.ext.flask import Vecorm

from .models import Article, db

MODES = ("semantic", "hybrid", "text")
MAX_K = 50

search = Vecorm()  # the extension; init_app(app, db) per app, like Flask-SQLAlchemy's db


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The app. ``SQLALCHEMY_DATABASE_URI`` defaults to ``$DATABASE_URL``; ``SEARCH_EMBEDDER``
    is ``auto`` (local model if installed, else hashing), ``local``, ``hashing`` or ``openai``."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("DATABASE_URL", "")
    app.config["SEARCH_EMBEDDER"] = "auto"
    app.config.update(config or {})
    if app.config["SQLALCHEMY_DATABASE_URI"]:  # psycopg 3 when the URL names no driver
        url = normalize_url(app.config["SQLALCHEMY_DATABASE_URI"])
        app.config["SQLALCHEMY_DATABASE_URI"] = url.render_as_string(hide_password=False)
    db.init_app(app)
    # One line: embed changed articles on commit, embed search text with the same embedder,
    # vecorm's search settings on the app's engines. A second create_app (tests, reloaders)
    # takes over db.session's hooks; search.teardown_app(app) undoes it all.
    search.init_app(app, db, embedder=choose_embedder(app.config["SEARCH_EMBEDDER"]))

    app.register_error_handler(HTTPException, _json_error)
    app.add_url_rule("/search", "search", view_func=search_view)
    app.add_url_rule("/articles", view_func=create_article, methods=["POST"])
    app.add_url_rule("/articles/<int:article_id>", view_func=show_article)
    return app


def _json_error(error: HTTPException) -> Any:
    return jsonify(error=error.name, detail=error.description), error.code


def search_view() -> Any:
    query = request.args.get("q", "").strip()
    mode = request.args.get("mode", "hybrid")
    category = request.args.get("category")
    if not query:
        abort(400, description="pass the text to search for as ?q=")
    if mode not in MODES:
        abort(400, description=f"mode must be one of {', '.join(MODES)}")
    k = request.args.get("k", 5, type=int)
    if k is None or not 1 <= k <= MAX_K:
        abort(400, description=f"k must be between 1 and {MAX_K}")

    filters = [Article.category == category] if category else []
    # No embedder= here: the session's installation embeds the text when the statement runs.
    statement: Select[Any]
    if mode == "semantic":
        statement = Article.nearest(query, k=k).where(*filters)
    elif mode == "hybrid":
        statement = Article.hybrid_search(query, k=k, where=filters)
    else:
        statement = Article.text_search(query, k=k).where(*filters)

    results = []
    for row in db.session.execute(statement):
        item = row[0].to_json()
        mapping = row._mapping
        item["distance"] = _number(mapping.get("distance"))
        item["score"] = _number(mapping.get("score"))
        results.append(item)
    return jsonify(query=query, mode=mode, category=category, results=results)


def _number(value: object) -> float | None:
    return None if value is None else round(float(value), 6)  # type: ignore[arg-type]


def create_article() -> Any:
    payload = request.get_json(silent=True) or {}
    missing = [name for name in ("title", "body", "category") if not payload.get(name)]
    if missing:
        abort(400, description=f"missing fields: {', '.join(missing)}")
    article = Article(
        title=payload["title"],
        body=payload["body"],
        category=payload["category"],
        author=payload.get("author"),
    )
    db.session.add(article)
    db.session.commit()  # the hook embeds title + body before the INSERT
    return jsonify(article.to_json()), 201


def show_article(article_id: int) -> Any:
    article = db.session.get(Article, article_id)
    if article is None:
        abort(404, description=f"no article {article_id}")
    item = article.to_json()
    item["embedding_model"] = article.embedding_model
    item["embedded"] = db.session.scalar(
        select(Article.embedding.is_not(None)).where(Article.id == article_id)
    )
    return jsonify(item)
