"""Passages written on flush: a parent row's text cut by its chunker, old passages replaced.

When a parent row is inserted, or one of its ``source`` attributes changes, the flush hook
(:func:`vecorm.install`) cuts its text with the passage model's chunker and brings the stored
passages in line, in the same flush:

* a passage whose ordinal, offsets and text are unchanged is left alone (no write, no call);
* the others are deleted and inserted anew, and the new ones embedded with the rest of the
  flush, in batches; a new passage whose text an old one of the same parent already embedded
  (text shifted by an edit above it) takes that vector instead of a provider call;
* a parent whose text is unchanged costs nothing; a deleted parent's passages go with it
  (``ON DELETE CASCADE``).

If embedding fails in strict mode the new passages are taken out of the session again and
nothing was deleted: the flush raises before any of its SQL runs, as for any other row, and
``session.commit()`` can be retried. :func:`rechunk` cuts existing parents (a passage model
added to a table that has rows, or a new chunker)::

    vecorm.rechunk(session, DocPassage)     # then session.commit(): embedded by the hook
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import LargeBinary, and_, delete, literal_column, or_, select, tuple_
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import InstanceState, Session
from sqlalchemy.orm.base import PASSIVE_NO_INITIALIZE

from vecorm.embedding.embedders.base import Embedder
from vecorm.embedding.embedders.chunking import Chunk, chunks_of
from vecorm.embedding.source import join_text, text_digest
from vecorm.schema.passages import passage_config, passage_models
from vecorm.schema.pgcatalog import pg

__all__ = ["PassageWrites", "rechunk", "write_passages"]

#: Parents per ``IN (...)`` when loading stored passages.
_LOAD_CHUNK = 500


@dataclass
class _Stored:
    """What a stored passage is, as far as deciding to keep or reuse it goes."""

    start: int | None
    end: int | None
    digest: bytes
    embedded_digest: bytes | None
    model: str | None
    has_vector: bool


@dataclass(eq=False)
class PassageWrites:
    """The passages one flush adds (already in the session) and the stored ones it replaces
    (deleted by :meth:`apply`, once the flush's embedding succeeded)."""

    added: list[Any] = field(default_factory=list)
    replaced: dict[type[Any], dict[Any, list[int]]] = field(default_factory=dict)

    def undo(self, session: Session) -> None:
        """Take the added passages out of the session again (the flush failed)."""
        for passage in self.added:
            if sa_inspect(passage).pending:
                session.expunge(passage)
        self.added.clear()

    def apply(self, session: Session) -> None:
        """Delete the replaced passages, and the loaded copies of them."""
        for model, by_parent in self.replaced.items():
            conditions = [
                and_(model.parent_id == key, model.ordinal.in_(ordinals))
                for key, ordinals in by_parent.items()
                if ordinals
            ]
            for start in range(0, len(conditions), _LOAD_CHUNK):
                session.execute(
                    delete(model).where(or_(*conditions[start : start + _LOAD_CHUNK])),
                    execution_options={"synchronize_session": "fetch"},
                )
        self.replaced.clear()


def write_passages(
    session: Session, embedder_of: Callable[[type[Any]], Embedder | None]
) -> PassageWrites | None:
    """Cut the new and changed parents of ``session`` and add their new passages to it.

    ``embedder_of(model)`` names the provider that will embed a passage model's rows (a
    stored vector is reused only when that provider made it). ``None`` when no parent of a
    passage model changed.
    """
    changed: dict[type[Any], list[Any]] = {}
    for instance in (*session.new, *session.dirty):
        models = passage_models(type(instance))
        if not models:
            continue
        state: InstanceState[Any] = sa_inspect(instance)
        if state.deleted or state.detached:
            continue
        for model in models:
            config = passage_config(model)
            if state.key is None or any(
                state.get_history(name, PASSIVE_NO_INITIALIZE).has_changes()
                for name in config.source
            ):
                changed.setdefault(model, []).append(instance)
    if not changed:
        return None
    writes = PassageWrites()
    for model, parents in changed.items():
        _replace(session, model, parents, writes, embedder_of(model))
    return writes


def rechunk(session: Session, model: type[Any], *, batch_size: int = 500) -> int:
    """Cut every row of ``model``'s parent and bring its stored passages in line (unchanged
    ones are kept), flushing every ``batch_size`` parents; returns how many passages it wrote.

    The flushes embed the new passages when :func:`vecorm.install`'s hook is on the session
    (otherwise they are written without vectors, for :func:`vecorm.backfill`). Commit after::

        written = vecorm.rechunk(session, DocPassage)
        session.commit()
    """
    config = passage_config(model)
    parent = config.parent
    (key_column,) = sa_inspect(parent).primary_key
    key = getattr(parent, sa_inspect(parent).get_property_by_column(key_column).key)
    written = 0
    last: Any = None
    while True:
        stmt = select(parent).order_by(key).limit(batch_size)
        if last is not None:
            stmt = stmt.where(key > last)
        parents = list(session.scalars(stmt))
        if not parents:
            return written
        writes = PassageWrites()
        with session.no_autoflush:
            _replace(session, model, parents, writes, config.embedder)
        writes.apply(session)
        written += len(writes.added)
        session.flush()  # the identity map holds clean rows weakly: memory stays flat
        last = sa_inspect(parents[-1]).identity[0]


def _replace(
    session: Session,
    model: type[Any],
    parents: Sequence[Any],
    writes: PassageWrites,
    embedder: Embedder | None,
) -> None:
    config = passage_config(model)
    keys = [_key_of(parent) for parent in parents]
    persistent = [key for key in keys if key is not None]
    _lock_parents(session, config.parent, persistent)
    stored = _load_stored(session, model, persistent)
    reuse: dict[tuple[Any, int], list[Any]] = {}  # stored passage -> new passages taking its vector
    models: dict[tuple[Any, int], str | None] = {}
    for parent, key in zip(parents, keys, strict=True):
        text = join_text(getattr(parent, name) for name in config.source)
        chunks = chunks_of(config.chunker, text, model.__name__) if text is not None else []
        old = stored.get(key, {}) if key is not None else {}
        digests = [text_digest(chunk.text) for chunk in chunks]
        kept = {
            ordinal
            for ordinal, (chunk, digest) in enumerate(zip(chunks, digests, strict=True))
            if ordinal in old and _same(old[ordinal], chunk, digest)
        }
        dropped = sorted(set(old) - kept)
        if dropped:
            writes.replaced.setdefault(model, {})[key] = dropped
        by_digest = {
            row.digest: ordinal
            for ordinal, row in sorted(old.items(), reverse=True)
            if row.has_vector
            and row.embedded_digest == row.digest
            and (embedder is None or row.model == embedder.model_name)
        }
        for ordinal, (chunk, digest) in enumerate(zip(chunks, digests, strict=True)):
            if ordinal in kept:
                continue
            passage = model(
                parent=parent,
                ordinal=ordinal,
                text=chunk.text,
                char_start=chunk.start,
                char_end=chunk.end,
            )
            if key is not None:
                passage.parent_id = key
            session.add(passage)
            writes.added.append(passage)
            source = by_digest.get(digest)
            if source is not None:
                reuse.setdefault((key, source), []).append(passage)
                models[(key, source)] = old[source].model
    _reuse_vectors(session, model, reuse, models)


def _lock_parents(session: Session, parent: type[Any], keys: list[Any]) -> None:
    """``SELECT ... FOR UPDATE`` the parents about to be cut (in key order), so that two
    transactions re-cutting one parent take turns: the second then reads the passages the
    first wrote instead of inserting ordinals it already holds. The flush's own ``UPDATE``
    of the parent would take the same lock a moment later."""
    if not keys:
        return
    mapper = sa_inspect(parent)
    (key_column,) = mapper.primary_key
    key = getattr(parent, mapper.get_property_by_column(key_column).key)
    for start in range(0, len(keys), _LOAD_CHUNK):
        chunk = keys[start : start + _LOAD_CHUNK]
        session.execute(select(key).where(key.in_(chunk)).order_by(key).with_for_update())


def _key_of(parent: Any) -> Any:
    identity = sa_inspect(parent).identity
    return identity[0] if identity else None


def _same(row: _Stored, chunk: Chunk, digest: bytes) -> bool:
    return row.digest == digest and row.start == chunk.start and row.end == chunk.end


def _load_stored(
    session: Session, model: type[Any], keys: list[Any]
) -> dict[Any, dict[int, _Stored]]:
    """Parent key -> ordinal -> the stored passage, in one query per 500 parents; the text's
    digest is computed by the server (SHA-256 of its UTF-8, as vecorm's own digest)."""
    found: dict[Any, dict[int, _Stored]] = {}
    text_sha = pg.sha256(pg.convert_to(model.text, literal_column("'UTF8'")), type_=LargeBinary)
    for start in range(0, len(keys), _LOAD_CHUNK):
        chunk = keys[start : start + _LOAD_CHUNK]
        rows = session.execute(
            select(
                model.parent_id,
                model.ordinal,
                model.char_start,
                model.char_end,
                text_sha,
                model.embedding_digest,
                model.embedding_model,
                model.embedding.is_not(None),
            ).where(model.parent_id.in_(chunk))
        )
        for key, ordinal, begin, end, digest, embedded, model_name, has_vector in rows:
            found.setdefault(key, {})[ordinal] = _Stored(
                begin, end, bytes(digest), embedded, model_name, bool(has_vector)
            )
    return found


def _reuse_vectors(
    session: Session,
    model: type[Any],
    reuse: dict[tuple[Any, int], list[Any]],
    models: dict[tuple[Any, int], str | None],
) -> None:
    """Give new passages the vectors of the stored ones with their text (one query)."""
    if not reuse:
        return
    sources = list(reuse)
    rows = session.execute(
        select(model.parent_id, model.ordinal, model.embedding).where(
            tuple_(model.parent_id, model.ordinal).in_(sources)
        )
    )
    for key, ordinal, vector in rows:
        for passage in reuse[(key, ordinal)]:
            passage.embedding = vector
            passage.embedding_digest = text_digest(passage.text)
            passage.embedding_model = models[(key, ordinal)]
