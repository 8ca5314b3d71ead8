"""The app's models: an ordinary Flask-SQLAlchemy model, made searchable by one mixin.

``Article`` was a plain ``db.Model``; adding ``vecorm.Searchable`` and ``__vecorm__`` gives it an
``embedding`` (vector(384), deferred), a generated ``search_vector`` and their indexes. The
Alembic revision in ``migrations/versions/`` creates all of it.
"""

from __future__ import annotations

from datetime import datetime

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import DateTime, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vecorm


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Article(vecorm.Searchable, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "articles"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "body"),
        dimensions=384,  # all-MiniLM-L6-v2 (vecorm[local]); the hashing embedder matches it
        index=vecorm.HNSW(m=16, ef_construction=64),
        weights={"title": "A", "body": "B"},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str]
    category: Mapped[str] = mapped_column(String(40), index=True)  # filter column: index it
    author: Mapped[str | None] = mapped_column(String(100))
    published_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "title": self.title,
            "category": self.category,
            "author": self.author,
        }
