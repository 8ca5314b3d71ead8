"""Session hooks: embed new and changed rows on flush, in batches, before the SQL is written.

Nothing happens on import. :func:`install` adds one ``before_flush`` listener to the session or
factory you give it, and :func:`uninstall` removes exactly that listener::

    SessionLocal = sessionmaker(engine)
    vecorm.install(SessionLocal, embedder=OpenAIEmbedder())

    with SessionLocal() as session:
        session.add_all([Document(title="Intro", content="PostgreSQL stores vectors.")] * 300)
        session.commit()        # 2 provider calls (batches of 256), then one INSERT

On each flush the hook looks at the new and dirty instances of searchable models. A dirty row
whose text fields did not change is skipped without a query (a ``category`` edit costs nothing);
for the others it loads the stored digest and model in one query per class and compares them with
``sha256(text)`` and the provider's ``model_name``. The rows that need a vector are grouped by
provider, their distinct texts embedded in batches of ``max_batch_size`` and the vectors assigned,
so the same flush writes text and embedding together. A row with no text (every field NULL or
blank) gets a NULL embedding, digest and model.

A model with ``SearchConfig(related={"author": ("name",)})`` embeds the referenced row's
attributes after its own fields (:mod:`vecorm.embedding.related`): a row pointed at another
author is re-embedded, and renaming an author re-embeds, in the same flush, the rows that
reference it (in ``"worker"`` mode they are left stale and their table notified).

A vector you assign yourself is kept: the hook records the digest of the row's text and, unless
you set ``embedding_model`` too, the provider's model name.

Failure modes (``mode=`` here, or ``SearchConfig(embedding_mode=...)`` per model, which wins):

``"strict"`` (default)
    The flush raises :class:`~vecorm.errors.EmbeddingError` before any SQL of that flush runs and
    no instance is modified; the session keeps its changes, so ``session.commit()`` can simply be
    retried, or ``session.rollback()`` discards them.
``"deferred"``
    Rows whose batch failed are written with a NULL embedding (and NULL digest and model), which
    makes them stale; :func:`vecorm.embedding.backfill` embeds them later.
``"worker"``
    The provider is never called: new rows are written without a vector, edited rows keep
    their previous one (now stale: its digest is of the old text), and the flush sends
    ``NOTIFY vecorm_embed, '<table>'``, delivered at COMMIT, to wake a
    :class:`vecorm.embedding.worker.Worker` (``vecorm worker``). No embedder is needed here.

With an ``AsyncSession`` the flush runs in SQLAlchemy's greenlet; the hook awaits the provider's
``aembed`` (or runs ``embed`` in a worker thread) through that bridge, so the event loop is never
blocked, autoflush included.

The installation's ``embedder`` also embeds *queries*: a second listener, on
``do_orm_execute``, runs each statement of the sessions with that embedder current, so
``Ticket.hybrid_search("printer on fire")`` on a model without ``SearchConfig(embedder=...)``
embeds its text when it executes (see :mod:`vecorm.search.vector` for why at execution)::

    vecorm.install(SessionLocal, embedder=HashingEmbedder(384))
    with SessionLocal() as session:
        hits = session.execute(Ticket.nearest("printer on fire", k=5)).all()
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import sqlalchemy.util
from sqlalchemy import ColumnElement, event, select, tuple_
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session, async_sessionmaker
from sqlalchemy.orm import (
    InstanceState,
    Mapper,
    ORMExecuteState,
    Session,
    scoped_session,
    sessionmaker,
)
from sqlalchemy.orm.attributes import History, flag_modified
from sqlalchemy.orm.base import PASSIVE_NO_INITIALIZE
from sqlalchemy.orm.unitofwork import UOWTransaction
from sqlalchemy.util.concurrency import in_greenlet

from vecorm.embedding.embedders.base import Embedder, EmbeddingMatrix, check_embeddings
from vecorm.embedding.embedders.query import executing_embedder, executing_with
from vecorm.embedding.notify import notify_tables, vector_table
from vecorm.embedding.passages import write_passages
from vecorm.embedding.related import dependent_rows, foreign_keys, related_changed, related_values
from vecorm.embedding.source import join_text, text_digest
from vecorm.errors import ConfigurationError, DimensionMismatch, EmbeddingError, VecormError
from vecorm.schema.config import EMBEDDING_MODES, EmbeddingMode, SearchConfig
from vecorm.schema.embeddings import EmbeddingSlot, embedding_slots
from vecorm.schema.related import dependents_of, related_fields

__all__ = ["install", "installed_embedder", "is_installed", "uninstall"]

logger = logging.getLogger("vecorm.embedding.events")

_FLUSH_MARK = "vecorm.embedded"
#: Primary keys per ``IN (...)`` when loading stored digests.
_LOAD_CHUNK = 1000

# SQLAlchemy 2.1 renamed await_only to await_; accept both.
_await: Callable[[Any], Any] = (
    getattr(sqlalchemy.util, "await_", None) or sqlalchemy.util.await_only
)


@dataclass(eq=False)
class _Installation:
    embedder: Embedder | None
    mode: EmbeddingMode
    listen_target: Any
    hook: Callable[..., None] = field(init=False)
    #: The ``do_orm_execute`` listener that lends ``embedder`` to query statements.
    execute_hook: Callable[[ORMExecuteState], Result[Any] | None] | None = None
    restore: Callable[[], None] | None = None


# Keyed by the object given to install() and by the object event.listen() received, the way
# SQLAlchemy's own event registry is keyed; entries vanish with their targets.
_by_target: weakref.WeakKeyDictionary[Any, _Installation] = weakref.WeakKeyDictionary()
_by_listen_target: weakref.WeakKeyDictionary[Any, _Installation] = weakref.WeakKeyDictionary()

InstallTarget = (
    Session
    | sessionmaker[Any]
    | scoped_session[Any]
    | AsyncSession
    | async_sessionmaker[Any]
    | async_scoped_session[Any]
    | type[Session]
)


def install(
    target: InstallTarget, *, embedder: Embedder | None = None, mode: EmbeddingMode = "strict"
) -> None:
    """Embed changed rows on every flush of ``target``'s sessions.

    ``target`` is a ``Session``, ``sessionmaker``, ``scoped_session``, ``AsyncSession``,
    ``async_sessionmaker`` or ``async_scoped_session`` (or a ``Session`` subclass). ``embedder``
    serves models whose ``SearchConfig`` has none of its own, on flush and for text queries
    the sessions execute; ``mode`` is ``"strict"``, ``"deferred"`` or ``"worker"`` (see the
    module docs). Calling it again on the same sessions (an app factory run twice) replaces
    the earlier installation. Example::

        vecorm.install(async_sessionmaker(engine), embedder=HashingEmbedder(384))
        vecorm.install(SessionLocal, mode="worker")    # requests leave embedding to workers
    """
    if mode not in EMBEDDING_MODES:
        raise ConfigurationError(f"mode must be 'strict', 'deferred' or 'worker', not {mode!r}")
    if embedder is not None and not callable(getattr(embedder, "embed", None)):
        raise ConfigurationError(
            f"embedder {embedder!r} has no embed(texts) method; pass a vecorm Embedder"
        )
    # Installing again replaces: an app factory (Flask's create_app, a FastAPI lifespan) may run
    # more than once in a process, and the last call's embedder and mode are the ones meant.
    uninstall(target)
    listen_target, restore = _listen_target(target)
    earlier = _by_listen_target.get(listen_target)
    if earlier is not None:  # the same sessions, installed through another factory
        for other, installation in list(_by_target.items()):
            if installation is earlier:
                uninstall(other)
    installation = _Installation(embedder, mode, listen_target, restore=restore)
    installation.hook = partial(_before_flush, installation)
    event.listen(listen_target, "before_flush", installation.hook)
    if embedder is not None:
        installation.execute_hook = partial(_execute_with_embedder, installation)
        event.listen(listen_target, "do_orm_execute", installation.execute_hook)
    _by_target[target] = installation
    _by_listen_target[listen_target] = installation


def uninstall(target: InstallTarget) -> bool:
    """Remove what :func:`install` added to ``target``; ``False`` if nothing was installed.

    ``vecorm.uninstall(SessionLocal)``
    """
    installation = _by_target.pop(target, None)
    if installation is None:
        return False
    event.remove(installation.listen_target, "before_flush", installation.hook)
    if installation.execute_hook is not None:
        event.remove(installation.listen_target, "do_orm_execute", installation.execute_hook)
    _by_listen_target.pop(installation.listen_target, None)
    if installation.restore is not None:
        installation.restore()
    return True


def is_installed(target: InstallTarget) -> bool:
    """Whether :func:`install` was called on ``target`` (and not undone)."""
    return target in _by_target


def installation_of(target: InstallTarget) -> object | None:
    """An opaque token for what :func:`install` put on ``target`` (``None`` if nothing).

    Compare tokens with ``is``: an app that installed and later finds another token knows a
    later :func:`install` (another app on the same sessions) replaced its own, and leaves it.
    """
    return _by_target.get(target)


def installed_embedder(session: Session | AsyncSession) -> Embedder | None:
    """The embedder :func:`install` gave to ``session`` (or to its factory), if any."""
    installation = _installation_for(session)
    return installation.embedder if installation is not None else None


def _installation_for(session: Session | AsyncSession) -> _Installation | None:
    sync_session = session.sync_session if isinstance(session, AsyncSession) else session
    found = _by_listen_target.get(sync_session)
    if found is not None:
        return found
    for klass in type(sync_session).__mro__:
        try:
            found = _by_listen_target.get(klass)
        except TypeError:
            continue
        if found is not None:
            return found
    return None


def _listen_target(target: object) -> tuple[Any, Callable[[], None] | None]:
    """What ``event.listen`` receives for ``target``, and how to undo any change made for it."""
    if isinstance(target, async_scoped_session):
        target = target.session_factory
    if isinstance(target, AsyncSession):
        return target.sync_session, None
    if isinstance(target, async_sessionmaker):
        return _own_sync_session_class(target)
    if isinstance(target, scoped_session):
        target = target.session_factory
    if isinstance(target, sessionmaker):
        return target.class_, None
    if isinstance(target, Session) or (isinstance(target, type) and issubclass(target, Session)):
        return target, None
    raise ConfigurationError(
        f"cannot install vecorm on {target!r}: pass a Session, sessionmaker, scoped_session, "
        "AsyncSession, async_sessionmaker or async_scoped_session"
    )


def _own_sync_session_class(
    maker: async_sessionmaker[Any],
) -> tuple[type[Session], Callable[[], None]]:
    """Give ``maker`` a private ``Session`` subclass, as ``sessionmaker`` does for itself.

    Listening on the shared ``Session`` class would hook every session of the process.
    """
    had_own = "sync_session_class" in maker.kw
    previous = maker.kw.get("sync_session_class")
    base: type[Session] = previous or maker.class_.sync_session_class
    private = type(base.__name__, (base,), {"__module__": base.__module__})

    def restore() -> None:
        if had_own:
            maker.kw["sync_session_class"] = previous
        else:
            maker.kw.pop("sync_session_class", None)

    maker.configure(sync_session_class=private)
    return private, restore


# --- the query hook -----------------------------------------------------------------------


def _execute_with_embedder(
    installation: _Installation, state: ORMExecuteState
) -> Result[Any] | None:
    """Run the statement with the session's embedder current, for the text queries it may hold.

    Every statement, not only vecorm's own: a search may sit in any subquery or CTE of yours.
    What it costs another statement is a lookup and one context-variable set and reset.
    """
    # Installed on a session and on its factory: the one installed_embedder() names serves,
    # and the second listener finds it already current.
    found = _installation_for(state.session)
    embedder = (found or installation).embedder
    if embedder is None or executing_embedder() is embedder:
        return None
    with executing_with(embedder):
        return state.invoke_statement()


# --- the flush hook -----------------------------------------------------------------------


@dataclass(eq=False)
class _Job:
    """One instance that needs a vector for ``text`` in its embedding ``slot``."""

    instance: Any
    slot: EmbeddingSlot
    text: str
    digest: bytes


@dataclass
class _Mark:
    """What a stored row holds for one of its embeddings."""

    digest: bytes | None
    model: str | None
    embedding_is_null: bool


@dataclass
class _Stored:
    #: By embedding attribute (``"embedding"``, ``"title_embedding"``).
    marks: dict[str, _Mark]
    fields: dict[str, Any]


def _before_flush(
    installation: _Installation,
    session: Session,
    flush_context: UOWTransaction,
    instances: Sequence[Any] | None,
) -> None:
    # Installed on a factory and on one of its sessions: embed once per flush.
    if flush_context.attributes.get(_FLUSH_MARK):
        return
    flush_context.attributes[_FLUSH_MARK] = True
    with session.no_autoflush:
        # New and changed parents of passage models: their new passages join this flush.
        passages = write_passages(session, partial(_embedder_for, installation))
        try:
            candidates = _changed_instances(session)
            waiting = _add_dependents(installation, session, candidates)
            stored = _load_stored(session, candidates) if candidates else {}
            related = _related_values(session, candidates, stored)
            groups, left = _plan(installation, candidates, stored, related)
            _notify_workers(session, left, waiting)
            vectors = _embed_groups(groups) if groups else {}
        except BaseException:
            if passages is not None:
                passages.undo(session)  # nothing of the flush is written, nothing added
            raise
        if passages is not None:
            passages.apply(session)  # the replaced passages go, now that nothing can fail
        _assign(groups, vectors)


def _embedder_for(installation: _Installation, cls: type[Any]) -> Embedder | None:
    config = getattr(cls, "__vecorm__", None)
    return _provider(installation, config if isinstance(config, SearchConfig) else None)


def _provider(installation: _Installation, config: SearchConfig | None) -> Embedder | None:
    """The embedder of ``config`` (a model's, or one of its embeddings'), else the installed one."""
    own = config.embedder if config is not None else None
    return own if own is not None else installation.embedder


def _notify_workers(session: Session, left: set[type[Any]], waiting: set[type[Any]]) -> None:
    """``NOTIFY`` the tables of the classes whose rows this flush left to workers, on the
    connection (and so in the transaction) that writes them: ``left``'s rows were marked
    (:func:`_mark_stale`); ``waiting``'s (the dependents of a changed related row, not
    loaded) were not, so their tables' workers check every row."""
    by_table: dict[str, tuple[type[Any], bool]] = {
        vector_table(cls).name: (cls, True) for cls in left
    }
    by_table.update({vector_table(cls).name: (cls, False) for cls in waiting})
    for name, (cls, marked) in sorted(by_table.items()):
        connection = session.connection(bind_arguments={"mapper": sa_inspect(cls)})
        notify_tables(connection, [name], marked=marked)


@dataclass(eq=False)
class _Candidate:
    """One embedding (``slot``) of an instance that may need a new vector."""

    instance: Any
    state: InstanceState[Any]
    slot: EmbeddingSlot
    pending: bool
    explicit_vector: bool

    @property
    def config(self) -> SearchConfig:
        return self.slot.config


def _changed_instances(session: Session) -> list[_Candidate]:
    """The embeddings of new searchable instances, and of dirty ones whose text fields (or
    related text) changed or whose vector was assigned."""
    found: list[_Candidate] = []
    for instance in (*session.new, *session.dirty):
        config = getattr(type(instance), "__vecorm__", None)
        if not isinstance(config, SearchConfig):
            continue
        state: InstanceState[Any] = sa_inspect(instance)
        if state.deleted or state.detached:
            continue
        pending = state.key is None
        related = None
        for slot in embedding_slots(instance):
            explicit = any(value is not None for value in _history(state, slot.attribute).added)
            text_changed = pending or any(
                _history(state, name).has_changes() for name in slot.config.fields
            )
            if not text_changed and slot.uses_related:
                if related is None:
                    related = related_changed(state, related_fields(type(instance)))
                text_changed = related
            if text_changed or explicit:
                found.append(_Candidate(instance, state, slot, pending, explicit))
    return found


def _add_dependents(
    installation: _Installation, session: Session, candidates: list[_Candidate]
) -> set[type[Any]]:
    """Add to ``candidates`` the rows whose related text this flush changes (an author
    renamed: the author's documents); returns the classes whose such rows are left to workers.
    """
    modes = {
        owner: (owner.__vecorm__.embedding_mode or installation.mode) != "worker"
        for instance in session.dirty
        for owner, _ in dependents_of(type(instance))
    }
    if not modes:
        return set()
    rows, left = dependent_rows(session, modes)
    known = {id(candidate.instance) for candidate in candidates}
    for row in rows:
        state: InstanceState[Any] = sa_inspect(row)
        if id(row) in known or state.deleted:
            continue
        for slot in embedding_slots(row):
            if slot.uses_related:
                candidates.append(_Candidate(row, state, slot, False, False))
    return left


def _related_values(
    session: Session,
    candidates: list[_Candidate],
    stored: dict[tuple[type[Any], tuple[Any, ...]], _Stored],
) -> dict[int, tuple[Any, ...]]:
    """The related attributes' values of the candidates that have ``related`` text."""
    with_related = {id(c.instance): c for c in candidates if c.slot.uses_related}
    if not with_related:
        return {}
    return related_values(
        session,
        [
            (
                candidate.instance,
                _stored_fields(stored.get((type(candidate.instance), _identity(candidate)))),
            )
            for candidate in with_related.values()
        ],
    )


def _identity(candidate: _Candidate) -> tuple[Any, ...]:
    return tuple(candidate.state.identity or ())


def _stored_fields(row: _Stored | None) -> dict[str, Any] | None:
    return row.fields if row is not None else None


def _history(state: InstanceState[Any], key: str) -> History:
    """Pre-flush history of one attribute, never loading it (cheaper than ``state.attrs``)."""
    return state.get_history(key, PASSIVE_NO_INITIALIZE)


def _load_stored(
    session: Session, candidates: list[_Candidate]
) -> dict[tuple[type[Any], tuple[Any, ...]], _Stored]:
    """Stored digest, model, NULL-ness, unloaded text fields and the foreign keys related text
    follows, of persistent candidates.

    One query per class (per 1000 rows), instead of one lazy load per instance.
    """
    by_class: dict[type[Any], dict[int, _Candidate]] = {}
    for candidate in candidates:
        if not candidate.pending and not candidate.explicit_vector:
            members = by_class.setdefault(type(candidate.instance), {})
            members.setdefault(id(candidate.instance), candidate)
    stored: dict[tuple[type[Any], tuple[Any, ...]], _Stored] = {}
    for cls, found in by_class.items():
        mapper: Mapper[Any] = sa_inspect(cls)
        slots = embedding_slots(cls)
        keys = [mapper.get_property_by_column(column).key for column in mapper.primary_key]
        key_attrs = [getattr(cls, key) for key in keys]
        fields = (name for slot in slots for name in slot.config.fields)
        names = tuple(dict.fromkeys((*fields, *foreign_keys(cls))))
        field_attrs = [getattr(cls, name) for name in names]
        marks: list[Any] = []
        for slot in slots:
            marks += [
                getattr(cls, slot.digest_attribute),
                getattr(cls, slot.model_attribute),
                getattr(cls, slot.attribute).is_(None),
            ]
        columns: list[Any] = [*key_attrs, *marks, *field_attrs]
        identities = [member.state.identity for member in found.values()]
        for start in range(0, len(identities), _LOAD_CHUNK):
            chunk = [ident for ident in identities[start : start + _LOAD_CHUNK] if ident]
            condition: ColumnElement[bool]
            if len(key_attrs) == 1:
                condition = key_attrs[0].in_([ident[0] for ident in chunk])
            else:
                condition = tuple_(*key_attrs).in_(chunk)
            for row in session.execute(select(*columns).where(condition)):
                values = tuple(row)
                width = len(key_attrs)
                identity = values[:width]
                at = width + 3 * len(slots)
                stored[(cls, identity)] = _Stored(
                    {
                        slot.attribute: _Mark(
                            values[width + 3 * n],
                            values[width + 3 * n + 1],
                            bool(values[width + 3 * n + 2]),
                        )
                        for n, slot in enumerate(slots)
                    },
                    dict(zip(names, values[at:], strict=True)),
                )
    return stored


GroupKey = tuple[int, EmbeddingMode]


@dataclass
class _Group:
    embedder: Embedder
    mode: EmbeddingMode
    jobs: list[_Job] = field(default_factory=list)
    classes: set[str] = field(default_factory=set)


def _plan(
    installation: _Installation,
    candidates: list[_Candidate],
    stored: dict[tuple[type[Any], tuple[Any, ...]], _Stored],
    related: dict[int, tuple[Any, ...]],
) -> tuple[list[_Group], set[type[Any]]]:
    """Decide per candidate: keep an assigned vector, clear it, skip it, embed its text, or
    leave it to a worker; returns the groups to embed and the classes left to workers."""
    groups: dict[GroupKey, _Group] = {}
    left: set[type[Any]] = set()
    for candidate in candidates:
        config = candidate.config
        slot = candidate.slot
        instance = candidate.instance
        cls = type(instance)
        row = stored.get((cls, _identity(candidate)))
        mark = row.marks[slot.attribute] if row is not None else None
        extra = related.get(id(instance), ()) if slot.uses_related else ()
        text = join_text((*_field_values(candidate, row), *extra))
        digest = text_digest(text) if text is not None else None
        embedder = _provider(installation, config)
        if candidate.explicit_vector:
            _record_assigned_vector(candidate, digest, embedder)
            continue
        if text is None or digest is None:
            if not candidate.pending and (
                mark is None or mark.digest is not None or not mark.embedding_is_null
            ):
                _clear(instance, slot)
            continue
        mode = config.embedding_mode or installation.mode
        if embedder is None:
            if mode == "worker":  # the worker has the embedder; the request needs none
                _mark_stale(candidate, mark, digest)
                left.add(cls)
                continue
            raise ConfigurationError(
                f"{cls.__name__} has text to embed but no embedder: pass "
                f"vecorm.install(..., embedder=...) or SearchConfig(embedder=...)"
            )
        _check_dimensions(cls.__name__, slot, embedder)
        if _is_current(mark, digest, embedder.model_name):
            continue  # the text was edited back to what is already embedded
        if mode == "worker":
            _mark_stale(candidate, mark, digest)
            left.add(cls)
            continue
        group = groups.setdefault((id(embedder), mode), _Group(embedder, mode))
        group.jobs.append(_Job(instance, slot, text, digest))
        group.classes.add(cls.__name__)
    return list(groups.values()), left


def _mark_stale(candidate: _Candidate, mark: _Mark | None, digest: bytes) -> None:
    """Leave ``candidate`` to a worker: its digest is written as NULL, unless the stored one
    is already its new text's (edited back). The row keeps its vector, searchable until the
    worker replaces it, and the worker finds it by ``digest IS NULL``, without hashing every
    row's text (:data:`vecorm.embedding.notify.MARKED`).

    Written even when this session read it as NULL: a worker may embed the old text and
    store its digest between that read and this flush's UPDATE, which waits for the worker's
    row lock and must then leave the row marked, not looking current."""
    instance, slot = candidate.instance, candidate.slot
    if candidate.pending:
        if getattr(instance, slot.digest_attribute) is not None:
            setattr(instance, slot.digest_attribute, None)
    elif mark is None or mark.digest != digest:
        setattr(instance, slot.digest_attribute, None)
        flag_modified(instance, slot.digest_attribute)


def _is_current(row: _Mark | None, digest: bytes, model_name: str) -> bool:
    """Whether the stored row already holds ``model_name``'s vector of the text of ``digest``."""
    return (
        row is not None
        and not row.embedding_is_null
        and row.digest == digest
        and row.model == model_name
    )


def _field_values(candidate: _Candidate, row: _Stored | None) -> list[Any]:
    """Present values of the text fields, without lazy loads (unloaded ones come from ``row``)."""
    state_dict = candidate.state.dict
    mapper = candidate.state.mapper
    values: list[Any] = []
    for name in candidate.config.fields:
        if name in state_dict:
            values.append(state_dict[name])
        elif row is not None:
            values.append(row.fields.get(name))
        elif candidate.pending:
            values.append(_scalar_default(mapper, name))
        else:
            values.append(getattr(candidate.instance, name))
    return values


def _scalar_default(mapper: Mapper[Any], name: str) -> Any:
    """A column's plain Python default, which the INSERT will use for an unset attribute."""
    prop = mapper.attrs.get(name)
    for column in getattr(prop, "columns", ()):
        default = getattr(column, "default", None)
        if default is not None and getattr(default, "is_scalar", False):
            return default.arg
    return None


def _record_assigned_vector(
    candidate: _Candidate, digest: bytes | None, embedder: Embedder | None
) -> None:
    state = candidate.state
    instance = candidate.instance
    slot = candidate.slot
    if not _history(state, slot.digest_attribute).added:
        setattr(instance, slot.digest_attribute, digest)
    if not _history(state, slot.model_attribute).added:
        name = embedder.model_name if embedder is not None else None
        setattr(instance, slot.model_attribute, name)


def _clear(instance: Any, slot: EmbeddingSlot) -> None:
    _store(instance, slot, None, None, None)


def _store(
    instance: Any, slot: EmbeddingSlot, vector: Any, digest: bytes | None, model: str | None
) -> None:
    """Set one embedding's vector, digest and model name on ``instance``."""
    setattr(instance, slot.attribute, vector)
    setattr(instance, slot.digest_attribute, digest)
    setattr(instance, slot.model_attribute, model)


def _check_dimensions(owner: str, slot: EmbeddingSlot, embedder: Embedder) -> None:
    width = getattr(embedder, "dimensions", None)
    config = slot.config
    if width is not None and width != config.dimensions:
        raise DimensionMismatch(
            f"{owner}.{slot.attribute} expects {config.dimensions} values but embedder "
            f"{embedder.model_name!r} returns {width}; use an embedder of {config.dimensions} "
            "dimensions or change the model with vecorm.ModelChange"
        )


def _batches(texts: list[str], size: int) -> list[list[str]]:
    size = max(1, int(size))
    return [texts[start : start + size] for start in range(0, len(texts), size)]


def _embed_groups(groups: list[_Group]) -> dict[tuple[int, str], EmbeddingMatrix | None]:
    """Vector per (embedder, text); ``None`` where a deferred batch failed."""
    vectors: dict[tuple[int, str], EmbeddingMatrix | None] = {}
    for group in groups:
        embedder = group.embedder
        texts = list(dict.fromkeys(job.text for job in group.jobs))
        batches = _batches(texts, getattr(embedder, "max_batch_size", None) or len(texts))
        for number, batch in enumerate(batches, start=1):
            try:
                matrix = check_embeddings(embedder, batch, call_embedder(embedder, batch))
            except DimensionMismatch:
                raise
            except Exception as exc:
                if group.mode == "strict":
                    raise _flush_error(group, number, len(batches), len(batch), exc) from exc
                logger.warning(
                    "embedding batch %d of %d (%d texts) with %r failed; the rows are written "
                    "with a NULL embedding, run vecorm.backfill() to embed them: %s",
                    number,
                    len(batches),
                    len(batch),
                    embedder.model_name,
                    exc,
                )
                for text in batch:
                    vectors[(id(embedder), text)] = None
                continue
            for text, vector in zip(batch, matrix, strict=True):
                vectors[(id(embedder), text)] = vector.copy()
    return vectors


def call_embedder(embedder: Embedder, batch: list[str]) -> object:
    """``embedder.embed(batch)``; inside an AsyncSession's greenlet, ``aembed`` awaited on the
    event loop instead (or ``embed`` in a worker thread), so the loop is never blocked."""
    if in_greenlet():
        return _await(_aembed(embedder, batch))
    return embedder.embed(batch)


async def _aembed(embedder: Embedder, batch: list[str]) -> object:
    aembed = getattr(embedder, "aembed", None)
    if aembed is not None:
        return await aembed(batch)
    return await asyncio.to_thread(embedder.embed, batch)


def _flush_error(
    group: _Group, number: int, total: int, size: int, exc: Exception
) -> EmbeddingError:
    classes = ", ".join(sorted(group.classes))
    detail = str(exc) if isinstance(exc, VecormError) else f"{type(exc).__name__}: {exc}"
    return EmbeddingError(
        f"embedding {classes} rows with {group.embedder.model_name!r} failed on batch {number} "
        f"of {total} ({size} texts): {detail}. Nothing of this flush was written and the "
        "session still holds the changes: retry session.commit() once the provider answers, "
        "or session.rollback(); SearchConfig(embedding_mode='deferred') writes such rows "
        "without a vector for vecorm.backfill() instead"
    )


def _assign(
    groups: Iterable[_Group], vectors: dict[tuple[int, str], EmbeddingMatrix | None]
) -> None:
    """Set vector, digest and model on every planned instance (only after all batches ran)."""
    for group in groups:
        model_name = group.embedder.model_name
        for job in group.jobs:
            vector = vectors.get((id(group.embedder), job.text))
            if vector is None:
                _clear(job.instance, job.slot)
                continue
            _store(job.instance, job.slot, vector, job.digest, model_name)
