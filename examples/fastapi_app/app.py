"""A FastAPI app on async SQLAlchemy: notes embedded on commit, searchable over HTTP.

    GET  /search?q=...&mode=semantic|hybrid|text&category=...&k=5   -> SearchResponse
    POST /notes {"title", "body", "category"}                        -> 201 NoteOut
    GET  /notes/{id}                                                 -> NoteOut

Everything on the request path awaits: the session is an ``AsyncSession`` from a dependency,
the flush hook awaits the provider's ``aembed`` on commit, and a search's text is embedded
(cached) through ``aembed`` too, when the statement executes, by the embedder that
``vecorm.ext.fastapi.lifespan`` installed. Run it::

    cd examples
    DATABASE_URL=postgresql://me@localhost/notes alembic -c fastapi_app/alembic.ini upgrade head
    DATABASE_URL=postgresql://me@localhost/notes uvicorn fastapi_app.app:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

import vecorm.ext.fastapi
from vecorm.embedders import Embedder, choose_embedder
from vecorm.engine import normalize_url

from .models import Note


class NoteIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1)
    category: str = Field(min_length=1, max_length=40)


class NoteOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    category: str
    embedding_model: str | None = None


class SearchHit(BaseModel):
    id: int
    title: str
    category: str
    distance: float | None = Field(description="cosine distance to the query, lower is nearer")
    score: float | None = Field(description="fused (hybrid) or full-text score, higher is better")


class SearchResponse(BaseModel):
    query: str
    mode: Literal["semantic", "hybrid", "text"]
    category: str | None
    results: list[SearchHit]


def create_app(database_url: str | None = None, *, embedder: str | Embedder = "auto") -> FastAPI:
    """The app, on ``database_url`` (default ``$DATABASE_URL``)."""
    url = normalize_url(database_url or os.environ["DATABASE_URL"])
    provider = choose_embedder(embedder) if isinstance(embedder, str) else embedder

    engine = create_async_engine(url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def own_lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.sessions = sessions
        yield
        await engine.dispose()

    # One line: embed changed notes on commit (awaiting aembed) and search text with the same
    # embedder, vecorm's search settings on the engine; all undone at shutdown.
    lifespan = vecorm.ext.fastapi.lifespan(sessions, embedder=provider, app_lifespan=own_lifespan)
    app = FastAPI(title="vecorm notes", lifespan=lifespan)
    _routes(app)
    return app


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request."""
    async with request.app.state.sessions() as session:
        yield session


Session = Annotated[AsyncSession, Depends(get_session)]


def _routes(app: FastAPI) -> None:
    @app.get("/search", response_model=SearchResponse)
    async def search(
        session: Session,
        q: Annotated[str, Query(min_length=1)],
        mode: Literal["semantic", "hybrid", "text"] = "hybrid",
        category: str | None = None,
        k: Annotated[int, Query(ge=1, le=50)] = 5,
    ) -> SearchResponse:
        filters = [Note.category == category] if category else []
        # No embedder here: the session's installation embeds q (awaiting aembed) at execution.
        statement: Select[Any]
        if mode == "text":
            statement = Note.text_search(q, k=k).where(*filters)
        elif mode == "semantic":
            statement = Note.nearest(q, k=k).where(*filters)
        else:
            statement = Note.hybrid_search(q, k=k, where=filters)
        hits = []
        for row in await session.execute(statement):
            note, values = row[0], row._mapping
            hits.append(
                SearchHit(
                    id=note.id,
                    title=note.title,
                    category=note.category,
                    distance=_number(values.get("distance")),
                    score=_number(values.get("score")),
                )
            )
        return SearchResponse(query=q, mode=mode, category=category, results=hits)

    @app.post("/notes", response_model=NoteOut, status_code=201)
    async def create_note(payload: NoteIn, session: Session) -> Note:
        note = Note(title=payload.title, body=payload.body, category=payload.category)
        session.add(note)
        await session.commit()  # the hook awaits the provider's aembed before the INSERT
        await session.refresh(note, ["embedding_model"])
        return note

    @app.get("/notes/{note_id}", response_model=NoteOut)
    async def show_note(note_id: int, session: Session) -> Note:
        note = await session.scalar(select(Note).where(Note.id == note_id))
        if note is None:
            raise HTTPException(status_code=404, detail=f"no note {note_id}")
        await session.refresh(note, ["embedding_model"])
        return note


def _number(value: object) -> float | None:
    return None if value is None else round(float(value), 6)  # type: ignore[arg-type]


def __getattr__(name: str) -> Any:
    # `uvicorn fastapi_app.app:app` builds the app from $DATABASE_URL on first access.
    if name == "app":
        return create_app()
    raise AttributeError(name)
