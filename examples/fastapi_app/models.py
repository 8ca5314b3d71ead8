"""The app's models: a plain declarative model made searchable by one mixin.

The Alembic revision in ``migrations/versions/`` creates the table, the ``vector`` extension,
the generated ``search_vector`` and the HNSW and GIN indexes.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vecorm


class Base(DeclarativeBase):
    pass


class Note(vecorm.Searchable, Base):
    __tablename__ = "notes"
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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
