"""The per-model settings object, ``__vecorm__ = SearchConfig(...)``.

A frozen dataclass, validated when the model class is created so that a mistake names the
class instead of surfacing as a database error later::

    class Document(vecorm.Searchable, Base):
        __tablename__ = "documents"
        __vecorm__ = vecorm.SearchConfig(
            fields=("title", "content"),
            dimensions=1536,
            distance="cosine",
            index=vecorm.HNSW(m=16, ef_construction=64),
            language="english",
            weights={"title": "A", "content": "B"},
        )
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from vecorm.embedding.embedders.base import Embedder
from vecorm.errors import ConfigurationError

log = logging.getLogger("vecorm")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TS_CONFIG = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*$")
#: pgvector cannot build an HNSW or IVFFlat index on ``vector`` above this many dimensions.
MAX_INDEXED_VECTOR_DIMENSIONS = 2000
#: ... nor on ``halfvec`` above this many.
MAX_INDEXED_HALFVEC_DIMENSIONS = 4000

#: ... nor on ``bit`` above this many.
MAX_INDEXED_BIT_DIMENSIONS = 64000
#: Candidates per result row that a binary-quantized index hands to the exact re-rank
#: (half as many from 1000 dimensions up; see SearchConfig.rerank).
DEFAULT_RERANK = 40

Storage = Literal["vector", "halfvec"]
#: What a vector index stores: the full ``vector``, ``halfvec`` (half the size) or a
#: binary-quantized ``bit`` string (1/32 of ``vector``), whose candidates are re-ranked exactly.
Precision = Literal["vector", "halfvec", "bit"]
PRECISIONS: tuple[Precision, ...] = ("vector", "halfvec", "bit")
EmbeddingMode = Literal["strict", "deferred", "worker"]
EMBEDDING_MODES: tuple[EmbeddingMode, ...] = ("strict", "deferred", "worker")
#: How ``search_vector`` is kept: a ``GENERATED ... STORED`` column, or a plain column that a
#: row trigger fills (addable to a big table without a rewrite; docs/adopting.md).
SearchVectorMode = Literal["generated", "trigger"]


class Distance(enum.Enum):
    """A distance function, with the pgvector operator and operator class that go with it."""

    COSINE = "cosine"
    L2 = "l2"
    INNER_PRODUCT = "inner_product"
    L1 = "l1"

    @property
    def operator(self) -> str:
        """The SQL operator: ``<=>``, ``<->``, ``<#>`` or ``<+>``."""
        return _OPERATORS[self]

    def opclass(self, storage: Storage | Precision = "vector") -> str:
        """The index operator class, e.g. ``vector_cosine_ops``; ``bit_hamming_ops`` for bit."""
        if storage == "bit":
            return "bit_hamming_ops"
        return f"{storage}_{_OPCLASS_SUFFIX[self]}"

    @classmethod
    def parse(cls, value: Distance | str) -> Distance:
        """Accept a member or its name: ``"cosine"``, ``"l2"``, ``"inner_product"``/``"ip"``."""
        if isinstance(value, Distance):
            return value
        normalised = value.strip().lower().replace("-", "_").replace(" ", "_")
        normalised = {"ip": "inner_product", "euclidean": "l2", "manhattan": "l1"}.get(
            normalised, normalised
        )
        try:
            return cls(normalised)
        except ValueError:
            names = ", ".join(repr(member.value) for member in cls)
            raise ConfigurationError(f"unknown distance {value!r}; use one of {names}") from None


_OPERATORS = {
    Distance.COSINE: "<=>",
    Distance.L2: "<->",
    Distance.INNER_PRODUCT: "<#>",
    Distance.L1: "<+>",
}
_OPCLASS_SUFFIX = {
    Distance.COSINE: "cosine_ops",
    Distance.L2: "l2_ops",
    Distance.INNER_PRODUCT: "ip_ops",
    Distance.L1: "l1_ops",
}


HNSWIterativeScan = Literal["off", "relaxed_order", "strict_order"]
IVFFlatIterativeScan = Literal["off", "relaxed_order"]


def _check_precision(kind: str, precision: object, rerank: object) -> None:
    """Validate ``precision`` / ``rerank`` of an index declaration."""
    if precision is not None and precision not in PRECISIONS:
        names = ", ".join(repr(name) for name in PRECISIONS)
        raise ConfigurationError(
            f"{kind} precision must be one of {names} or None, not {precision!r}"
        )
    if rerank is not None:
        if isinstance(rerank, bool) or not isinstance(rerank, int) or not 1 <= rerank <= 1000:
            raise ConfigurationError(
                f"{kind} rerank must be an integer between 1 and 1000, not {rerank!r}"
            )
        if precision not in (None, "bit"):
            raise ConfigurationError(
                f"{kind} rerank applies to precision='bit' only (got precision={precision!r})"
            )


def _check_query_time(
    kind: str,
    iterative_scan: str,
    allowed: tuple[str, ...],
    *,
    max_scan_tuples: int | None = None,
    scan_mem_multiplier: float | None = None,
) -> None:
    """Validate the query-time settings of an index declaration (see vecorm.search.settings)."""
    if iterative_scan not in allowed:
        names = ", ".join(repr(name) for name in allowed)
        raise ConfigurationError(
            f"{kind} iterative_scan must be one of {names}, not {iterative_scan!r}"
        )
    if max_scan_tuples is not None and not 1 <= max_scan_tuples <= 2_147_483_647:
        raise ConfigurationError(f"{kind} max_scan_tuples must be positive, not {max_scan_tuples}")
    if scan_mem_multiplier is not None and not 1 <= scan_mem_multiplier <= 1000:
        raise ConfigurationError(
            f"{kind} scan_mem_multiplier must be between 1 and 1000, not {scan_mem_multiplier}"
        )


@dataclass(frozen=True)
class HNSW:
    """An HNSW index: better speed/recall than IVFFlat, no training data needed.

    ``ef_search`` is the query-time default; ``None`` means vecorm's 200 (pgvector's own
    default is 40; see docs/querying.md for why vecorm searches wider).
    """

    m: int = 16
    ef_construction: int = 64
    ef_search: int | None = None
    #: Query time: keep scanning the graph until enough rows pass the WHERE clause
    #: (pgvector 0.8). ``"relaxed_order"`` (default) gives the best recall under filters;
    #: vecorm's queries add a primary-key tie-break whose sort re-orders the rows exactly.
    iterative_scan: HNSWIterativeScan = "relaxed_order"
    #: Query time: most tuples an iterative scan visits (pgvector's default 20000).
    max_scan_tuples: int | None = None
    #: Query time: memory of an iterative scan as a multiple of ``work_mem`` (default 1).
    scan_mem_multiplier: float | None = None
    #: What the index stores: ``"vector"``, ``"halfvec"`` (an expression index on
    #: ``embedding::halfvec(N)``: half the size, same recall) or ``"bit"`` (on
    #: ``binary_quantize(embedding)::bit(N)``: 1/32 the size; searches take ``k * rerank``
    #: candidates by Hamming distance and re-rank them exactly). ``None``: the column's type,
    #: or above 2000 dimensions ``"halfvec"`` (above 4000, ``"bit"``).
    precision: Precision | None = None
    #: For ``precision="bit"``: candidates per result row (default 20, 40 below 1000 dims).
    rerank: int | None = None

    def __post_init__(self) -> None:
        _check_precision("HNSW", self.precision, self.rerank)
        _check_query_time(
            "HNSW",
            self.iterative_scan,
            ("off", "relaxed_order", "strict_order"),
            max_scan_tuples=self.max_scan_tuples,
            scan_mem_multiplier=self.scan_mem_multiplier,
        )
        if not 2 <= self.m <= 100:
            raise ConfigurationError(f"HNSW m must be between 2 and 100, not {self.m}")
        if not 4 <= self.ef_construction <= 1000:
            raise ConfigurationError(
                f"HNSW ef_construction must be between 4 and 1000, not {self.ef_construction}"
            )
        if self.ef_construction < 2 * self.m:
            raise ConfigurationError(
                f"HNSW ef_construction ({self.ef_construction}) must be at least 2 * m "
                f"({2 * self.m})"
            )
        if self.ef_search is not None and not 1 <= self.ef_search <= 1000:
            raise ConfigurationError(
                f"HNSW ef_search must be between 1 and 1000, not {self.ef_search}"
            )

    @property
    def method(self) -> str:
        return "hnsw"

    @property
    def with_params(self) -> dict[str, int]:
        """The index's ``WITH (...)`` storage parameters."""
        return {"m": self.m, "ef_construction": self.ef_construction}


@dataclass(frozen=True)
class IVFFlat:
    """An IVFFlat index: faster to build, smaller; build it after the table has data.

    A rule of thumb for ``lists`` is rows / 1000 up to 1M rows; ``probes`` is the query-time
    default; ``None`` means sqrt(lists) in vecorm's statements (pgvector's own default is 1).
    """

    lists: int = 100
    probes: int | None = None
    #: Query time: probe more lists until enough rows pass the WHERE clause (pgvector 0.8).
    iterative_scan: IVFFlatIterativeScan = "relaxed_order"
    #: Query time: most lists an iterative scan probes (default: all).
    max_probes: int | None = None
    #: What the index stores: ``"vector"``, ``"halfvec"`` (an expression index on
    #: ``embedding::halfvec(N)``: half the size, same recall) or ``"bit"`` (on
    #: ``binary_quantize(embedding)::bit(N)``: 1/32 the size; searches take ``k * rerank``
    #: candidates by Hamming distance and re-rank them exactly). ``None``: the column's type,
    #: or above 2000 dimensions ``"halfvec"`` (above 4000, ``"bit"``).
    precision: Precision | None = None
    #: For ``precision="bit"``: candidates per result row (default 20, 40 below 1000 dims).
    rerank: int | None = None

    def __post_init__(self) -> None:
        _check_precision("IVFFlat", self.precision, self.rerank)
        _check_query_time("IVFFlat", self.iterative_scan, ("off", "relaxed_order"))
        if self.max_probes is not None and not 1 <= self.max_probes <= self.lists:
            raise ConfigurationError(
                f"IVFFlat max_probes must be between 1 and lists ({self.lists}), "
                f"not {self.max_probes}"
            )
        if not 1 <= self.lists <= 32768:
            raise ConfigurationError(f"IVFFlat lists must be between 1 and 32768, not {self.lists}")
        if self.probes is not None and not 1 <= self.probes <= self.lists:
            raise ConfigurationError(
                f"IVFFlat probes must be between 1 and lists ({self.lists}), not {self.probes}"
            )

    @property
    def method(self) -> str:
        return "ivfflat"

    @property
    def with_params(self) -> dict[str, int]:
        """The index's ``WITH (...)`` storage parameters."""
        return {"lists": self.lists}


@dataclass(frozen=True)
class BM25:
    """BM25 ranking for the full-text side (the default lexical ranking).

    ``k1`` and ``b`` are Anserini's defaults (0.9, 0.4), chosen on other collections, not
    tuned here. A query whose terms hold more than ``prune_above`` postings (10,000 by
    default) is ranked with MaxScore pruning, which never reads the postings of words too
    common to lift a document into the top k; results are exact either way (``seed`` postings
    per term find its first threshold). ``prune_above=None`` scores every posting of every
    query. Pruning took the p95 of hybrid searches at 100,000 documents from 45 to 18 ms,
    and was not slower at 20,000 (docs/search-quality.md)::

        SearchConfig(fields=("body",), bm25=BM25(prune_above=None))   # score every posting
        SearchConfig(fields=("body",), bm25=BM25(k1=1.2, b=0.75))
        SearchConfig(fields=("body",), bm25=None)     # no statistics tables; ts_rank ranking

    ``distributed_by`` (a primary-key column, such as ``tenant_id``) keeps the statistics per
    value of that column, in side tables keyed by it, so that Citus can distribute them with
    the table and co-locate them (docs/scaling.md, "Citus"): a search filtered on one value
    ranks with that value's statistics, any other with their sum over every value::

        SearchConfig(fields=("body",), bm25=BM25(distributed_by="tenant_id"))
    """

    k1: float = 0.9
    b: float = 0.4
    prune_above: int | None = 10_000
    seed: int = 100
    distributed_by: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.k1, bool) or not isinstance(self.k1, int | float) or not self.k1 >= 0:
            raise ConfigurationError(f"BM25 k1 must be a number >= 0, not {self.k1!r}")
        if isinstance(self.b, bool) or not isinstance(self.b, int | float) or not 0 <= self.b <= 1:
            raise ConfigurationError(f"BM25 b must be a number between 0 and 1, not {self.b!r}")
        for name in ("prune_above", "seed"):
            value = getattr(self, name)
            if value is None and name == "prune_above":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"BM25 {name} must be a positive integer"
                    f"{' or None' if name == 'prune_above' else ''}, not {value!r}"
                )
        if self.distributed_by is not None and (
            not isinstance(self.distributed_by, str) or not self.distributed_by
        ):
            raise ConfigurationError(
                f"BM25 distributed_by must be a column name or None, not {self.distributed_by!r}"
            )


VectorIndex = HNSW | IVFFlat
_WEIGHTS = frozenset("ABCD")


@dataclass(frozen=True)
class Embedding:
    """Another embedding of the same row, beside ``embedding``: of other fields (a title's
    own vector), or of another model (the new one, during a switch).

    Declared by attribute name in :attr:`SearchConfig.embeddings`; the model gains that
    vector column, ``<name>_digest`` and ``<name>_model`` beside it, and its own index. The
    flush hook, :func:`vecorm.backfill`, ``vecorm worker`` and :class:`vecorm.ModelChange`
    keep it like ``embedding``, and every search helper takes ``embedding="<name>"``
    (docs/embedding.md#several-embeddings-per-model)::

        SearchConfig(
            fields=("title", "body"),
            embeddings={"title_embedding": vecorm.Embedding(fields=("title",))},
        )
        Article.nearest("pgvector", k=5, embedding="title_embedding")

    Unset, ``fields``, ``dimensions``, ``distance`` and ``embedder`` are the model's
    (``fields=None``: the same text as ``embedding``, related attributes included);
    ``column`` is the database name of the vector column (default: the attribute name).
    """

    fields: tuple[str, ...] | None = None
    dimensions: int | None = None
    distance: Distance | str | None = None
    index: VectorIndex | None = field(default_factory=HNSW)
    storage: Storage = "vector"
    embedder: Embedder | None = field(default=None, compare=False)
    column: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.fields, str):
            object.__setattr__(self, "fields", (self.fields,))
        elif self.fields is not None:
            object.__setattr__(self, "fields", tuple(self.fields))
        if self.distance is not None:
            object.__setattr__(self, "distance", Distance.parse(self.distance))


@dataclass(frozen=True)
class SearchConfig:
    """How a model is embedded, indexed and searched.

    ``fields`` are the text attributes that are embedded and full-text indexed, in order.
    Column names (``embedding_column`` ...) are the database names; the Python attributes are
    always ``embedding``, ``search_vector``, ``embedding_digest`` and ``embedding_model``.
    """

    fields: tuple[str, ...]
    dimensions: int = 1536
    distance: Distance | str = Distance.COSINE
    index: VectorIndex | None = field(default_factory=HNSW)
    storage: Storage = "vector"
    language: str = "english"
    weights: Mapping[str, str] | None = None
    text_index: bool = True
    embedder: Embedder | None = field(default=None, compare=False)
    #: How a flush embeds: ``"strict"`` calls the provider and raises (writing nothing) when it
    #: fails, ``"deferred"`` writes a failed batch's rows with a NULL embedding for
    #: :func:`vecorm.embedding.backfill`, ``"worker"`` never calls the provider and leaves
    #: changed rows to a ``vecorm worker`` (docs/embedding.md). ``None`` follows the mode
    #: given to :func:`vecorm.install`.
    embedding_mode: EmbeddingMode | None = None
    embedding_column: str = "embedding"
    tsvector_column: str = "search_vector"
    digest_column: str = "embedding_digest"
    model_column: str = "embedding_model"
    #: Name of an existing vector index to adopt as is (default: ``ix_<table>_<column>_<method>``).
    #: Alembic then compares it under that name and never rebuilds it; see docs/adopting.md.
    vector_index_name: str | None = None
    #: BM25 statistics kept by the database and BM25 as the default lexical ranking
    #: (docs/search-quality.md); ``None`` keeps no statistics and ranks with ``ts_rank``.
    bm25: BM25 | None = field(default_factory=BM25)
    #: How the tsvector column is maintained. ``"generated"`` (default, and what Citus needs):
    #: ``GENERATED ALWAYS AS (...) STORED``, which PostgreSQL can only add to an existing table
    #: by rewriting it under an ACCESS EXCLUSIVE lock. ``"trigger"``: a plain nullable column
    #: that a ``BEFORE INSERT OR UPDATE`` row trigger fills with the same expression, so
    #: autogenerate can add it to a big, busy table online (a catalog-only ``ADD COLUMN``, then
    #: a batched fill; docs/adopting.md)::
    #:
    #:     SearchConfig(fields=("title", "body"), search_vector="trigger")
    search_vector: SearchVectorMode = "generated"
    #: Text of rows this model references through a many-to-one relationship, added to the
    #: EMBEDDED text after ``fields``: ``{"author": ("name",)}`` embeds
    #: ``title\nbody\n<the author's name>``. A change of the author's name re-embeds the rows
    #: that reference it (docs/embedding.md#text-from-related-rows). Not in ``search_vector``:
    #: a generated column cannot read another table.
    related: Mapping[str, tuple[str, ...]] | None = None
    #: More embeddings of the same row, by attribute name, each with its own column, index,
    #: fields and embedder (:class:`Embedding`); ``embedding`` stays the default one.
    embeddings: Mapping[str, Embedding] | None = None

    def __post_init__(self) -> None:
        fields = (self.fields,) if isinstance(self.fields, str) else tuple(self.fields)
        object.__setattr__(self, "fields", fields)
        if self.related is not None:
            related = {
                name: (attributes,) if isinstance(attributes, str) else tuple(attributes)
                for name, attributes in dict(self.related).items()
            }
            object.__setattr__(self, "related", MappingProxyType(related))
        object.__setattr__(self, "distance", Distance.parse(self.distance))
        if self.weights is not None:
            object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        if self.embeddings is not None:
            object.__setattr__(self, "embeddings", MappingProxyType(dict(self.embeddings)))

    @property
    def embedded_fields(self) -> tuple[str, ...]:
        """What the embedded text is made of, in order: ``fields``, then each related
        attribute as ``relationship.attribute`` (``("title", "body", "author.name")``)."""
        related = self.related or {}
        return (
            *self.fields,
            *(
                f"{name}.{attribute}"
                for name, attributes in related.items()
                for attribute in attributes
            ),
        )

    @property
    def metric(self) -> Distance:
        """``distance`` as a :class:`Distance` member."""
        assert isinstance(self.distance, Distance)
        return self.distance

    @property
    def index_precision(self) -> Precision | None:
        """What the vector index stores (``None`` without an index); see :attr:`HNSW.precision`.

        Unset, it is the column's own type, except above pgvector's 2000-dimension limit for
        ``vector`` indexes: ``"halfvec"`` up to 4000 dimensions, ``"bit"`` beyond.
        """
        if self.index is None:
            return None
        if self.index.precision is not None:
            return self.index.precision
        if self.storage == "halfvec":
            return "halfvec" if self.dimensions <= MAX_INDEXED_HALFVEC_DIMENSIONS else "bit"
        if self.dimensions <= MAX_INDEXED_VECTOR_DIMENSIONS:
            return "vector"
        return "halfvec" if self.dimensions <= MAX_INDEXED_HALFVEC_DIMENSIONS else "bit"

    @property
    def index_is_expression(self) -> bool:
        """Whether the vector index is on an expression (a cast) rather than the column."""
        precision = self.index_precision
        return precision is not None and precision != self.storage

    @property
    def rerank(self) -> int:
        """Candidates per result row of a ``precision="bit"`` search: the index's ``rerank``,
        else 20 from 1000 dimensions up and 40 below (fewer bits tell neighbours apart less
        well; benchmarks/scale.py: 0.997 recall@10 at 20 on 1536 dimensions)."""
        configured = self.index.rerank if self.index is not None else None
        if configured is not None:
            return configured
        return DEFAULT_RERANK // 2 if self.dimensions >= 1000 else DEFAULT_RERANK

    @property
    def opclass(self) -> str:
        """Operator class of the vector index, e.g. ``vector_cosine_ops``, ``bit_hamming_ops``."""
        return self.metric.opclass(self.index_precision or self.storage)

    def validate(self, owner: str) -> None:
        """Raise :class:`ConfigurationError` naming ``owner`` if the settings cannot work."""

        def fail(message: str) -> ConfigurationError:
            return ConfigurationError(f"{owner}.__vecorm__: {message}")

        if not self.fields:
            raise fail("fields must name at least one text attribute")
        for name in self.fields:
            if not isinstance(name, str) or not _IDENTIFIER.match(name):
                raise fail(f"field {name!r} is not a valid attribute name")
        if len(set(self.fields)) != len(self.fields):
            raise fail(f"fields repeat a name: {self.fields}")
        if not isinstance(self.dimensions, int) or not 1 <= self.dimensions <= 16000:
            raise fail(f"dimensions must be an integer between 1 and 16000, not {self.dimensions}")
        if self.storage not in ("vector", "halfvec"):
            raise fail(f"storage must be 'vector' or 'halfvec', not {self.storage!r}")
        if not _TS_CONFIG.match(self.language):
            raise fail(
                f"language {self.language!r} is not a text search configuration name "
                "(e.g. 'english', 'simple', 'pg_catalog.german')"
            )
        for column in (
            self.embedding_column,
            self.tsvector_column,
            self.digest_column,
            self.model_column,
        ):
            if not _IDENTIFIER.match(column) or len(column) > 63:
                raise fail(f"column name {column!r} is not a valid identifier")
        if self.vector_index_name is not None and not (
            isinstance(self.vector_index_name, str) and 0 < len(self.vector_index_name) <= 63
        ):
            raise fail(
                f"vector_index_name {self.vector_index_name!r} must be an index name of 1 to 63 "
                "characters"
            )
        self._validate_related(fail)
        if self.weights is not None:
            for name, weight in self.weights.items():
                if name not in self.fields:
                    raise fail(f"weights name {name!r}, which is not one of fields {self.fields}")
                if weight not in _WEIGHTS:
                    raise fail(f"weight {weight!r} for {name!r} must be one of 'A', 'B', 'C', 'D'")
        if self.index is not None:
            self._validate_index(fail, owner)
        if self.search_vector not in ("generated", "trigger"):
            raise fail(
                f"search_vector must be 'generated' or 'trigger', not {self.search_vector!r}"
            )
        if self.embedding_mode is not None and self.embedding_mode not in EMBEDDING_MODES:
            raise fail(
                "embedding_mode must be 'strict', 'deferred', 'worker' or None, not "
                f"{self.embedding_mode!r}"
            )
        if self.embedder is not None and getattr(self.embedder, "dimensions", None) not in (
            None,
            self.dimensions,
        ):
            raise fail(
                f"embedder {self.embedder.model_name!r} returns {self.embedder.dimensions} "
                f"dimensions but the column has {self.dimensions}"
            )

    def _validate_related(self, fail: Callable[[str], ConfigurationError]) -> None:
        """The shape of ``related``; the relationships themselves are checked when the mappers
        are configured (a relationship may name a class declared further down)."""
        if self.related is None:
            return
        for name, attributes in self.related.items():
            if not isinstance(name, str) or not _IDENTIFIER.match(name):
                raise fail(f"related {name!r} is not a valid relationship name")
            if name in self.fields:
                raise fail(f"related {name!r} is also one of fields {self.fields}")
            if not attributes:
                raise fail(
                    f"related {name!r} must name the text attributes to embed, e.g. "
                    f"related={{{name!r}: ('name',)}}"
                )
            for attribute in attributes:
                if not isinstance(attribute, str) or not _IDENTIFIER.match(attribute):
                    raise fail(f"related {name!r} attribute {attribute!r} is not a valid name")
            if len(set(attributes)) != len(attributes):
                raise fail(f"related {name!r} repeats an attribute: {attributes}")

    def _validate_index(self, fail: Callable[[str], ConfigurationError], owner: str) -> None:
        assert self.index is not None
        precision = self.index_precision
        kind = type(self.index).__name__
        if isinstance(self.index, IVFFlat) and self.metric is Distance.L1 and precision != "bit":
            raise fail("IVFFlat does not support L1 distance; use HNSW(...) for L1")
        if self.storage == "halfvec" and precision == "vector":
            raise fail(
                "precision='vector' on a storage='halfvec' column would index values the column "
                "does not hold; use precision='halfvec' (the column as is) or 'bit'"
            )
        limits = {
            "vector": MAX_INDEXED_VECTOR_DIMENSIONS,
            "halfvec": MAX_INDEXED_HALFVEC_DIMENSIONS,
            "bit": MAX_INDEXED_BIT_DIMENSIONS,
        }
        assert precision is not None
        if self.dimensions > limits[precision]:
            raise fail(
                f"pgvector cannot index {precision} over {limits[precision]} dimensions "
                f"({self.dimensions} given); use {kind}(precision='halfvec') (up to 4000 "
                "dimensions) or precision='bit' (binary-quantized, re-ranked exactly)"
            )
        if self.index.rerank is not None and precision != "bit":
            raise fail(f"rerank applies to precision='bit' only; this index is {precision}")
        if self.index.precision is None and precision != self.storage:
            log.info(
                "vecorm: %s: %d dimensions exceed pgvector's limit for %s indexes; indexing "
                "%s(embedding) instead (set %s(precision=...) to choose)",
                owner,
                self.dimensions,
                self.storage,
                "binary_quantize" if precision == "bit" else precision,
                kind,
            )


def search_config(cls: Any) -> SearchConfig:
    """The validated :class:`SearchConfig` of a searchable class (or instance's class)."""
    config = getattr(cls, "__vecorm__", None)
    if not isinstance(config, SearchConfig):
        name = getattr(cls, "__name__", repr(cls))
        raise ConfigurationError(
            f"{name} inherits vecorm.Searchable but has no __vecorm__ = vecorm.SearchConfig(...)"
        )
    return config
