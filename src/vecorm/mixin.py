"""The declarative mixin that makes a model searchable.

Inherit :class:`Searchable` and state a :class:`~vecorm.schema.config.SearchConfig`; the model
gains,
without touching its other columns:

* ``embedding``: ``vector(N)`` (or ``halfvec(N)``), nullable and **deferred**, so loading a row
  never drags 6 KB of floats along unless asked;
* ``search_vector``: a ``tsvector GENERATED ALWAYS AS (...) STORED`` over the text fields (or,
  with ``SearchConfig(search_vector="trigger")``, a plain column a row trigger keeps equal to
  the same expression: addable to a big table online, see docs/adopting.md);
* ``embedding_digest`` / ``embedding_model``: SHA-256 of the text that was embedded and the
  model that embedded it, so unchanged text is never re-embedded and a model change is seen;
* an HNSW or IVFFlat index with the operator class of the configured distance, and a GIN index
  on the tsvector, with deterministic names.

Example::

    class Base(DeclarativeBase):
        pass

    class Document(vecorm.Searchable, Base):
        __tablename__ = "documents"
        __vecorm__ = vecorm.SearchConfig(fields=("title", "content"), dimensions=384)

        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str]
        content: Mapped[str]

    Base.metadata.create_all(engine)   # table, generated column, HNSW + GIN indexes
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    Column,
    Computed,
    FetchedValue,
    ForeignKey,
    Integer,
    LargeBinary,
    Select,
    String,
    Table,
    Text,
    event,
)
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.engine import Connection
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.hybrid import hybrid_method
from sqlalchemy.orm import Mapped, Mapper, declared_attr, mapped_column, relationship
from sqlalchemy.orm.attributes import QueryableAttribute
from sqlalchemy.sql.elements import ColumnElement

from vecorm.embedding.embedders.base import Embedder
from vecorm.errors import ConfigurationError, DimensionMismatch, InvalidVector
from vecorm.schema import sqlmodel as _sqlmodel
from vecorm.schema.config import Distance, SearchConfig, search_config
from vecorm.schema.embeddings import (
    EmbeddingRef,
    EmbeddingSlot,
    embedding_slots,
    validate_embeddings,
)
from vecorm.schema.extension import ensure_vector_extension
from vecorm.schema.generated import (
    SearchVectorTrigger,
    declare_trigger,
    trigger_of,
    tsvector_expression,
)
from vecorm.schema.indexes import text_index, vector_index
from vecorm.schema.passages import PassageConfig, passage_config, register_passage_model
from vecorm.schema.related import is_text, register_related
from vecorm.schema.types import CheckedVector, HalfVec, Vector, to_float_array
from vecorm.search import bm25 as _bm25
from vecorm.search import hybrid as _hybrid
from vecorm.search import text as _textsearch
from vecorm.search import vector as _query
from vecorm.search.arms import LexicalArm
from vecorm.search.headline import headline as _headline
from vecorm.search.hybrid import (
    DEFAULT_DEPTH,
    DEFAULT_MISSING,
    DEFAULT_NORMALIZATION,
    DEFAULT_RRF_K,
    DEFAULT_SEMANTIC_WEIGHT,
    Method,
    Missing,
    Normalization,
)
from vecorm.search.text import Ranking
from vecorm.search.tsquery import Mode
from vecorm.search.vector import QueryInput


class Searchable:
    """Declarative mixin adding an embedding, a generated tsvector and their indexes.

    Set ``__vecorm__ = SearchConfig(fields=(...), ...)`` on the class.
    """

    __vecorm__: ClassVar[SearchConfig]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Validate before SQLAlchemy maps the class so the error names the class, not a column.
        if getattr(cls, "__vecorm__", None) is not None:
            config = search_config(cls)
            config.validate(cls.__name__)
            validate_embeddings(config, cls.__name__)
            _declare_added_embeddings(cls, config)
        # --- SQLModel support (vecorm/schema/sqlmodel.py) ---
        # pydantic refuses attributes that are not fields: route the mixin's to SQLAlchemy.
        _sqlmodel.prepare_class(cls)
        # --- end SQLModel support ---
        super().__init_subclass__(**kwargs)

    @declared_attr
    def embedding(cls) -> Mapped[npt.NDArray[np.float32] | None]:
        return _vector_column(search_config(cls))  # type: ignore[no-any-return]

    @declared_attr
    def search_vector(cls) -> Mapped[Any]:
        config = search_config(cls)
        columns = [_column_name(cls, name) for name in config.fields]
        weights = {
            _column_name(cls, name): weight for name, weight in (config.weights or {}).items()
        }
        if config.search_vector == "trigger":
            # Kept by a row trigger (created with the table): the ORM reads it back.
            return mapped_column(
                config.tsvector_column,
                TSVECTOR,
                FetchedValue(),
                server_onupdate=FetchedValue(),
                nullable=True,
                deferred=True,
                deferred_group="vecorm_search_vector",
            )
        return mapped_column(
            config.tsvector_column,
            TSVECTOR,
            Computed(tsvector_expression(columns, config.language, weights), persisted=True),
            deferred=True,
            deferred_group="vecorm_search_vector",
        )

    @declared_attr
    def embedding_digest(cls) -> Mapped[bytes | None]:
        return _bookkeeping_column(search_config(cls).digest_column, LargeBinary)  # type: ignore[no-any-return]

    @declared_attr
    def embedding_model(cls) -> Mapped[str | None]:
        return _bookkeeping_column(search_config(cls).model_column, String(200))  # type: ignore[no-any-return]

    # --- query helpers (search/vector.py, search/hybrid.py) ---
    @classmethod
    def nearest(
        cls,
        query: QueryInput,
        k: int = 10,
        *,
        distance: Distance | str | None = None,
        max_distance: float | None = None,
        embedder: Embedder | None = None,
        with_score: bool = False,
        exact: bool = False,
        candidates: int | None = None,
        embedding: EmbeddingRef = None,
    ) -> Select[Any]:
        """``select(cls, distance)`` of the ``k`` nearest rows; see
        :func:`vecorm.search.vector.nearest`. ``embedding`` names another of the model's
        embeddings (``SearchConfig(embeddings=...)``).

        ``session.execute(Document.nearest("vacuum tuning", k=5).where(...)).all()``
        """
        return _query.nearest(
            cls,
            query,
            k,
            distance=distance,
            max_distance=max_distance,
            embedder=embedder,
            with_score=with_score,
            exact=exact,
            candidates=candidates,
            embedding=embedding,
        )

    def similar_to(
        self,
        k: int = 10,
        *,
        distance: Distance | str | None = None,
        max_distance: float | None = None,
        with_score: bool = False,
        exact: bool = False,
        candidates: int | None = None,
        embedding: EmbeddingRef = None,
    ) -> Select[Any]:
        """More like this row: ``select(cls, distance)`` of the ``k`` rows nearest to its
        embedding, itself left out; see :func:`vecorm.search.vector.similar_to`.

        ``session.execute(doc.similar_to(k=5).where(Document.category == doc.category))``
        """
        return _query.similar_to(
            type(self),
            self,
            k,
            distance=distance,
            max_distance=max_distance,
            with_score=with_score,
            exact=exact,
            candidates=candidates,
            embedding=embedding,
        )

    @classmethod
    def snippet(
        cls,
        text: str,
        field: str | None = None,
        *,
        mode: Mode = "any",
        max_words: int = 35,
        min_words: int = 15,
        max_fragments: int = 0,
        html: bool = True,
        label: str = "snippet",
    ) -> ColumnElement[str]:
        """An excerpt of ``field`` (default: the searchable fields) with ``text``'s words
        marked, HTML-safe; see :func:`vecorm.search.headline.headline`.

        ``session.execute(Document.text_search(q).add_columns(Document.snippet(q)))``
        """
        return _headline(
            cls,
            text,
            field,
            mode=mode,
            max_words=max_words,
            min_words=min_words,
            max_fragments=max_fragments,
            html=html,
            label=label,
        )

    def _distance_to_instance(
        self,
        query: QueryInput,
        *,
        distance: Distance | str | None = None,
        embedder: Embedder | None = None,
        embedding: EmbeddingRef = None,
    ) -> float | None:
        return _query.instance_distance(
            self, query, distance=distance, embedder=embedder, embedding=embedding
        )

    def _distance_to_expression(
        cls,
        query: QueryInput,
        *,
        distance: Distance | str | None = None,
        embedder: Embedder | None = None,
        embedding: EmbeddingRef = None,
    ) -> ColumnElement[float | None]:
        return _query.distance_expression(
            cls, query, distance=distance, embedder=embedder, embedding=embedding
        )

    #: Distance to a query (vector or text): a SQL expression on the class, usable in
    #: ``where`` / ``order_by`` / ``select``, and the same number computed in Python on an
    #: instance. ``select(Document).where(Document.distance_to(q) < 0.3)``; ``doc.distance_to(q)``
    distance_to = hybrid_method(_distance_to_instance, _distance_to_expression)

    @classmethod
    def text_search(
        cls,
        text: str,
        k: int = 10,
        *,
        mode: Mode = "any",
        ranking: Ranking | None = None,
        normalization: int | None = None,
        weights: Mapping[str, float] | Sequence[float] | None = None,
        k1: float | None = None,
        b: float | None = None,
        where: ColumnElement[bool] | Sequence[ColumnElement[bool]] | None = None,
    ) -> Select[Any]:
        """``select(cls, score)`` of full-text matches; see :func:`vecorm.search.text.text_search`.

        ``session.execute(Document.text_search("error 0x80070057")).all()``
        """
        return _textsearch.text_search(
            cls,
            text,
            k,
            mode=mode,
            ranking=ranking,
            normalization=normalization,
            weights=weights,
            k1=k1,
            b=b,
            where=where,
        )

    @classmethod
    def hybrid_search(
        cls,
        text: str,
        k: int = 10,
        *,
        vector: QueryInput | None = None,
        method: Method = "blend",
        semantic_weight: float = DEFAULT_SEMANTIC_WEIGHT,
        rrf_k: int = DEFAULT_RRF_K,
        depth: int = DEFAULT_DEPTH,
        where: ColumnElement[bool] | Sequence[ColumnElement[bool]] | None = None,
        lexical: LexicalArm | Ranking | None = None,
        distance: Distance | str | None = None,
        embedder: Embedder | None = None,
        normalization: Normalization = DEFAULT_NORMALIZATION,
        missing: Missing = DEFAULT_MISSING,
        max_distance: float | None = None,
        min_text_score: float | None = None,
        embedding: EmbeddingRef = None,
    ) -> Select[Any]:
        """Semantic + full-text fused in one statement; see
        :func:`vecorm.search.hybrid.hybrid_search`.

        ``session.execute(Document.hybrid_search("ERR_CONN_RESET", k=5, method="rrf")).all()``
        """
        return _hybrid.hybrid_search(
            cls,
            text,
            k,
            vector=vector,
            method=method,
            semantic_weight=semantic_weight,
            rrf_k=rrf_k,
            depth=depth,
            where=where,
            lexical=lexical,
            distance=distance,
            embedder=embedder,
            normalization=normalization,
            missing=missing,
            max_distance=max_distance,
            min_text_score=min_text_score,
            embedding=embedding,
        )


class Passage(Searchable):
    """Declarative mixin for the passages of a long text: a searchable model of its own,
    written by the flush hook from its parent's text (docs/passages.md).

    Set ``__vecorm__ = PassageConfig(parent=Doc, source=("body",), ...)``; the model gains,
    besides :class:`Searchable`'s columns and indexes:

    * ``parent_id``: the parent's primary key, ``REFERENCES parent ON DELETE CASCADE``;
    * ``ordinal``: the passage's place in the text (0, 1, ...); ``(parent_id, ordinal)`` is the
      primary key;
    * ``text``: the passage, embedded and full-text indexed;
    * ``char_start`` / ``char_end``: where it lies in the parent's text
      (``text == source[char_start:char_end]``; NULL when a chunker of yours returned a
      string that is not verbatim in the source);
    * ``parent``: the relationship to the parent row.

    ``vecorm.passage_search(DocPassage, q, k=10)`` returns ``(Doc, DocPassage, distance)``
    rows, one per parent with its nearest passage; ``vecorm.passage_text_search`` the same by
    BM25. The inherited helpers (``DocPassage.nearest``, ``.text_search``, ``.hybrid_search``)
    search the passages themselves.
    """

    __vecorm__: ClassVar[PassageConfig]

    @declared_attr
    def parent_id(cls) -> Mapped[Any]:
        config = passage_config(cls)
        parent_table = getattr(config.parent, "__table__", None)
        keys = list(parent_table.primary_key.columns) if parent_table is not None else []
        if len(keys) != 1:
            raise ConfigurationError(
                f"{getattr(cls, '__name__', cls)}.__vecorm__: the parent "
                f"{config.parent.__name__} must be a mapped class with a one-column primary "
                f"key (found {len(keys)} columns)"
            )
        return mapped_column("parent_id", ForeignKey(keys[0], ondelete="CASCADE"), primary_key=True)

    @declared_attr
    def ordinal(cls) -> Mapped[int]:
        return mapped_column("ordinal", Integer, primary_key=True, autoincrement=False)

    @declared_attr
    def text(cls) -> Mapped[str]:
        return mapped_column("text", Text, nullable=False)

    @declared_attr
    def char_start(cls) -> Mapped[int | None]:
        return mapped_column("char_start", Integer, nullable=True)

    @declared_attr
    def char_end(cls) -> Mapped[int | None]:
        return mapped_column("char_end", Integer, nullable=True)

    @declared_attr
    def parent(cls) -> Mapped[Any]:
        return relationship(passage_config(cls).parent, lazy="select")


def _declare_added_embeddings(cls: type[Any], config: SearchConfig) -> None:
    """Put the columns of ``SearchConfig.embeddings`` in the class body, before SQLAlchemy
    maps it (once: a subclass inherits them, or SQLAlchemy copies them from a mixin)."""
    if not config.embeddings:
        return
    if _sqlmodel.is_sqlmodel_class(cls):
        raise ConfigurationError(
            f"{cls.__name__}.__vecorm__: embeddings is not supported on SQLModel classes yet; "
            "declare the model with SQLAlchemy's DeclarativeBase"
        )
    for slot in embedding_slots(cls)[1:]:
        if any(slot.attribute in klass.__dict__ for klass in cls.__mro__):
            continue
        setattr(cls, slot.attribute, _vector_column(slot.config))
        setattr(
            cls, slot.digest_attribute, _bookkeeping_column(slot.config.digest_column, LargeBinary)
        )
        setattr(
            cls, slot.model_attribute, _bookkeeping_column(slot.config.model_column, String(200))
        )


def _vector_column(config: SearchConfig) -> Any:
    column_type = Vector if config.storage == "vector" else HalfVec
    return mapped_column(
        config.embedding_column,
        column_type(config.dimensions, as_numpy=True),
        nullable=True,
        deferred=True,
        deferred_group="vecorm_embedding",
    )


def _bookkeeping_column(name: str, type_: Any) -> Any:
    """An embedding's digest (``LargeBinary``) or model name (``String(200)``) column."""
    return mapped_column(
        name, type_, nullable=True, deferred=True, deferred_group="vecorm_bookkeeping"
    )


def _column_name(cls: Any, attribute: str) -> str:
    """Database column name of ``attribute``, read from the class body before mapping."""
    for klass in cls.__mro__:
        declared = klass.__dict__.get(attribute)
        if declared is None:
            continue
        column = getattr(declared, "column", None)  # MappedColumn
        if isinstance(column, Column) and column.name:
            return str(column.name)
        if isinstance(declared, Column) and declared.name:
            return str(declared.name)
        if isinstance(declared, QueryableAttribute):
            prop_columns = getattr(declared.property, "columns", None)
            if prop_columns:
                return str(prop_columns[0].name)
        break
    return attribute


# Tables already given their indexes; kept off Table.info so Alembic never renders it.
_completed_tables: weakref.WeakSet[Table] = weakref.WeakSet()


@event.listens_for(Searchable, "after_mapper_constructed", propagate=True)
def _complete_mapping(mapper: Mapper[Any], cls: type[Any]) -> None:
    """Attach indexes and the vector validator once, on the class that owns the table."""
    config = search_config(cls)
    table = mapper.local_table
    if not isinstance(table, Table):
        return
    embedding = table.c.get(config.embedding_column)
    if embedding is None or not isinstance(embedding, Column):
        return  # single-table subclass, or joined subclass whose parent holds the columns
    if table in _completed_tables:
        return  # the event can fire again for the same table
    _completed_tables.add(table)
    if isinstance(config, PassageConfig):
        if not issubclass(cls, Passage):
            raise ConfigurationError(
                f"{cls.__name__}.__vecorm__ is a PassageConfig: declare the class with "
                f"vecorm.Passage (class {cls.__name__}(vecorm.Passage, Base)), which adds "
                "its parent_id, ordinal, text and offset columns"
            )
        _check_source(cls, config)
        register_passage_model(cls)
    _check_fields(cls, mapper, config)
    event.listen(table, "before_create", ensure_vector_extension)
    # Index() on a table's columns attaches itself to that table.
    vector_index(embedding, config)
    if config.search_vector == "trigger":
        weights = {
            _column_name(cls, name): weight for name, weight in (config.weights or {}).items()
        }
        columns = tuple(_column_name(cls, name) for name in config.fields)
        declare_trigger(
            table,
            SearchVectorTrigger(
                table.name, config.tsvector_column, columns, config.language, weights or None
            ),
        )
        event.listen(table, "after_create", _create_search_vector_trigger)
        event.listen(table, "after_drop", _drop_search_vector_trigger)
    if config.text_index:
        text_index(table.c[config.tsvector_column])
    if config.bm25 is not None:
        _bm25.attach(table, config)  # side tables + statement triggers (vecorm/search/bm25/)
    for slot in embedding_slots(cls):
        column = table.c[slot.config.embedding_column]
        if not slot.is_default:
            vector_index(column, slot.config)
        attribute = mapper.class_manager[_attribute_key(mapper, column)]
        validator = _vector_validator(cls, slot)
        # raw, retval and the key: SQLAlchemy calls the validator itself, with no wrapper.
        event.listen(
            attribute, "set", validator, retval=True, propagate=True, raw=True, include_key=True
        )


@event.listens_for(Searchable, "mapper_configured", propagate=True)
def _check_related(mapper: Mapper[Any], cls: type[Any]) -> None:
    """Resolve ``SearchConfig(related=...)`` once the relationships are (a relationship may
    name a class declared after this one); a bad declaration names the class."""
    register_related(cls)


def _create_search_vector_trigger(target: Table, connection: Connection, **_: Any) -> None:
    trigger = trigger_of(target)
    if trigger is not None:
        for statement in trigger.create_statements(_bm25.table_schema(connection, target)):
            connection.exec_driver_sql(statement)


def _drop_search_vector_trigger(target: Table, connection: Connection, **_: Any) -> None:
    trigger = trigger_of(target)
    if trigger is not None:
        schema = connection.schema_for_object(target) or str(
            connection.exec_driver_sql("SELECT pg_catalog.current_schema()").scalar()
        )
        for statement in trigger.drop_statements(schema):
            connection.exec_driver_sql(statement)


def _attribute_key(mapper: Mapper[Any], column: Column[Any]) -> str:
    prop = mapper.get_property_by_column(column)
    return prop.key


def _check_fields(cls: type[Any], mapper: Mapper[Any], config: SearchConfig) -> None:
    added = (slot.config.fields for slot in embedding_slots(cls)[1:])
    for name in dict.fromkeys((*config.fields, *(name for names in added for name in names))):
        # get_property, not mapper.attrs: that would configure every mapper now, and fail on a
        # relationship to a class declared further down the module.
        try:
            prop: Any = mapper.get_property(name)
        except InvalidRequestError:
            prop = None
        columns = getattr(prop, "columns", None)
        if prop is None or not columns:
            raise ConfigurationError(
                f"{cls.__name__}.__vecorm__: field {name!r} is not a mapped column of "
                f"{cls.__name__}"
            )
        expected = _column_name(cls, name)
        if columns[0].name != expected:
            raise ConfigurationError(
                f"{cls.__name__}.__vecorm__: field {name!r} maps to column "
                f"{columns[0].name!r}; declare it in the class body with mapped_column"
            )
        # The generated tsvector needs text, and the embedded text must match it.
        if not is_text(columns[0]):
            raise ConfigurationError(
                f"{cls.__name__}.__vecorm__: field {name!r} is a {columns[0].type} column; "
                "fields must be text (String/Text) columns"
            )


def _check_source(cls: type[Any], config: PassageConfig) -> None:
    """The parent's ``source`` attributes are text columns of its table."""
    parent = config.parent
    table = getattr(parent, "__table__", None)
    for name in config.source:
        column = table.c.get(_column_name(parent, name)) if table is not None else None
        if column is None or not is_text(column):
            raise ConfigurationError(
                f"{cls.__name__}.__vecorm__: source {name!r} is not a text (String/Text) "
                f"column of {parent.__name__}"
            )


def _vector_validator(cls: type[Any], slot: EmbeddingSlot) -> Any:
    label = f"{cls.__name__}.{slot.attribute}"
    config = slot.config

    def validate(
        state: object, value: Any, oldvalue: Any, initiator: Any, key: str | None = None
    ) -> Any:
        if value is None:
            return None
        try:
            checked = to_float_array(value, config.dimensions, label=label)
        except DimensionMismatch:
            given = np.asarray(value).shape
            raise DimensionMismatch(
                f"{label} expects {config.dimensions} values, got {given[0] if given else 0}"
            ) from None
        except InvalidVector:
            raise
        return checked.view(CheckedVector)

    return validate
