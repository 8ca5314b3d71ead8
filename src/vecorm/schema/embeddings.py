"""A model's embeddings: ``embedding``, and those :attr:`SearchConfig.embeddings` adds.

Each is an :class:`EmbeddingSlot`: the attribute names of its vector, digest and model
columns, and a :class:`~vecorm.schema.config.SearchConfig` of its own (``fields``,
``dimensions``, ``distance``, ``index``, ``embedder``, column names) that the search,
embedding and backfill code read exactly as they read a model's::

    slot = embedding_slot(Article, "title_embedding")
    slot.config.fields, slot.config.dimensions      # (('title',), 384)
    getattr(Article, slot.attribute)                # Article.title_embedding

``embedding_slot(model, None)`` is the default ``embedding``, whose config is the model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vecorm.errors import ConfigurationError
from vecorm.schema.config import Embedding, SearchConfig, search_config

#: The default embedding's attribute names.
DEFAULT = "embedding"
#: Suffixes of the bookkeeping attributes (and default column names) of an added embedding.
DIGEST_SUFFIX = "_digest"
MODEL_SUFFIX = "_model"

EmbeddingRef = str | Any | None
"""Which embedding: ``None`` (the default one), its attribute name, or the attribute itself
(``Article.title_embedding``)."""


@dataclass(frozen=True)
class EmbeddingSlot:
    """One embedding of a model: where it lives and how it is made and searched."""

    #: Python attribute of the vector (``"embedding"``, ``"title_embedding"``).
    attribute: str
    #: Python attributes of the digest of the embedded text and of the model that made it.
    digest_attribute: str
    model_attribute: str
    #: Its settings, read like a model's (``bm25=None`` and ``text_index=False`` on an added one).
    config: SearchConfig

    @property
    def is_default(self) -> bool:
        return self.attribute == DEFAULT

    @property
    def uses_related(self) -> bool:
        """Whether its text includes ``SearchConfig(related=...)`` attributes."""
        return bool(self.config.related)


_slots: dict[int, tuple[SearchConfig, tuple[EmbeddingSlot, ...]]] = {}


def embedding_slots(model: Any) -> tuple[EmbeddingSlot, ...]:
    """Every embedding of ``model`` (a class or an instance), the default one first."""
    config = search_config(model)
    cached = _slots.get(id(config))
    if cached is not None and cached[0] is config:
        return cached[1]
    slots = (
        EmbeddingSlot(DEFAULT, f"{DEFAULT}{DIGEST_SUFFIX}", f"{DEFAULT}{MODEL_SUFFIX}", config),
        *(added_slot(config, name, spec) for name, spec in (config.embeddings or {}).items()),
    )
    _slots[id(config)] = (config, slots)
    return slots


def embedding_slot(model: Any, embedding: EmbeddingRef = None) -> EmbeddingSlot:
    """The embedding ``embedding`` names (default: ``embedding``), or a
    :class:`~vecorm.errors.ConfigurationError` that lists the model's."""
    slots = embedding_slots(model)
    if embedding is None:
        return slots[0]
    name = embedding if isinstance(embedding, str) else getattr(embedding, "key", None)
    for slot in slots:
        if slot.attribute == name:
            return slot
    owner = getattr(model, "__name__", type(model).__name__)
    names = ", ".join(repr(slot.attribute) for slot in slots)
    raise ConfigurationError(
        f"{owner} has no embedding {embedding!r}; its embeddings are {names} "
        "(SearchConfig(embeddings={...}) declares more)"
    )


def added_slot(config: SearchConfig, name: str, spec: Embedding) -> EmbeddingSlot:
    """The slot of ``SearchConfig.embeddings[name]``: its settings over the model's."""
    column = spec.column or name
    own_text = spec.fields is not None
    derived = SearchConfig(
        fields=spec.fields if spec.fields is not None else config.fields,
        dimensions=spec.dimensions if spec.dimensions is not None else config.dimensions,
        distance=spec.distance if spec.distance is not None else config.metric,
        index=spec.index,
        storage=spec.storage,
        language=config.language,
        text_index=False,
        embedder=spec.embedder if spec.embedder is not None else config.embedder,
        embedding_mode=config.embedding_mode,
        embedding_column=column,
        tsvector_column=config.tsvector_column,
        digest_column=f"{column}{DIGEST_SUFFIX}",
        model_column=f"{column}{MODEL_SUFFIX}",
        bm25=None,
        search_vector=config.search_vector,
        related=None if own_text else config.related,
    )
    return EmbeddingSlot(name, f"{name}{DIGEST_SUFFIX}", f"{name}{MODEL_SUFFIX}", derived)


def validate_embeddings(config: SearchConfig, owner: str) -> None:
    """Check :attr:`SearchConfig.embeddings` (names, and each one's settings as a model's)."""
    if config.embeddings is None:
        return
    taken = {
        DEFAULT,
        f"{DEFAULT}{DIGEST_SUFFIX}",
        f"{DEFAULT}{MODEL_SUFFIX}",
        "search_vector",
        *config.fields,
        *(config.related or {}),
    }
    columns = {config.embedding_column, config.digest_column, config.model_column}
    columns.add(config.tsvector_column)
    for name, spec in config.embeddings.items():
        where = f"{owner}.__vecorm__: embeddings[{name!r}]"
        if not isinstance(spec, Embedding):
            raise ConfigurationError(f"{where} must be a vecorm.Embedding(...), not {spec!r}")
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise ConfigurationError(f"{where}: the name must be a Python attribute name")
        slot = added_slot(config, name, spec)
        attributes = (slot.attribute, slot.digest_attribute, slot.model_attribute)
        clash = [attribute for attribute in attributes if attribute in taken]
        if clash:
            raise ConfigurationError(f"{where}: the attribute {clash[0]!r} is already taken")
        taken.update(attributes)
        names = (slot.config.embedding_column, slot.config.digest_column, slot.config.model_column)
        if any(len(column) > 63 for column in names):
            raise ConfigurationError(
                f"{where}: column names over 63 characters; give a shorter column=..."
            )
        clash = [column for column in names if column in columns]
        if clash:
            raise ConfigurationError(f"{where}: the column {clash[0]!r} is already taken")
        columns.update(names)
        try:
            slot.config.validate(f"{owner}")
        except ConfigurationError as exc:
            detail = str(exc).removeprefix(f"{owner}.__vecorm__: ")
            raise ConfigurationError(f"{where}: {detail}") from None
