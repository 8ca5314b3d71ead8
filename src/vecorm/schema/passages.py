"""The settings of a passage model, ``__vecorm__ = PassageConfig(...)``, and the registry that
finds a parent's passage models.

A passage model is a searchable model of its own (:class:`PassageConfig` is a
:class:`~vecorm.schema.config.SearchConfig` whose one field is the passage's ``text``) that
holds a long parent row's text cut into passages by a chunker::

    class DocPassage(vecorm.Passage, Base):
        __tablename__ = "doc_passages"
        __vecorm__ = vecorm.PassageConfig(
            parent=Doc, source=("title", "body"), chunker=vecorm.chunk_characters(1200, 200)
        )

The mixin (:class:`vecorm.Passage`) declares the columns; the flush hook
(:mod:`vecorm.embedding.passages`) writes the passages; :mod:`vecorm.search.passages` searches
them and returns their parents.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from vecorm.embedding.embedders.chunking import Chunk, chunk_characters
from vecorm.errors import ConfigurationError
from vecorm.schema.config import _IDENTIFIER, SearchConfig

#: The passage model's one searchable field.
TEXT_FIELD = "text"


@dataclass(frozen=True, kw_only=True)
class PassageConfig(SearchConfig):
    """How a parent model's text is cut into passages, and how they are embedded and indexed.

    ``parent`` is the mapped class whose rows the passages belong to (declared before),
    ``source`` its text attributes (joined by newlines, as an embedded row's fields are; the
    passages' offsets are into that text), ``chunker`` any ``text -> passages`` callable
    (default :func:`~vecorm.embedding.embedders.chunking.chunk_characters`, 2000 characters
    with 200 of overlap). Every :class:`SearchConfig` setting applies to the passages
    (``dimensions``, ``index``, ``bm25``, ``embedder``, ``embedding_mode`` ...); ``fields`` is
    always ``("text",)``.
    """

    fields: tuple[str, ...] = field(default=(TEXT_FIELD,), init=False)
    parent: Any = None
    source: tuple[str, ...] = ()
    chunker: Callable[[str], Iterable[Chunk | str]] = field(
        default_factory=chunk_characters, compare=False
    )

    def __post_init__(self) -> None:
        source = (self.source,) if isinstance(self.source, str) else tuple(self.source)
        object.__setattr__(self, "source", source)
        super().__post_init__()

    def validate(self, owner: str) -> None:
        """Raise :class:`ConfigurationError` naming ``owner`` if the settings cannot work."""
        super().validate(owner)

        def fail(message: str) -> ConfigurationError:
            return ConfigurationError(f"{owner}.__vecorm__: {message}")

        if self.embeddings:
            raise fail(
                "embeddings is not supported on passages; declare a second passage model "
                "for another embedding of the same text"
            )
        if self.related:
            raise fail(
                "related is not supported on passages; put the related text in the parent's "
                "source attributes, or in a searchable model of its own"
            )
        if not isinstance(self.parent, type):
            raise fail(
                f"parent must be the mapped class the passages belong to, not {self.parent!r}"
            )
        if not self.source:
            raise fail(f"source must name the text attributes of {self.parent.__name__} to cut")
        for name in self.source:
            if not isinstance(name, str) or not _IDENTIFIER.match(name):
                raise fail(f"source {name!r} is not a valid attribute name")
        if not callable(self.chunker):
            raise fail(
                f"chunker must be a function text -> passages (vecorm.chunk_characters(...), "
                f"vecorm.chunk_tokens(...) or your own), not {self.chunker!r}"
            )


def passage_config(cls: Any) -> PassageConfig:
    """The :class:`PassageConfig` of a passage model (or instance's class)."""
    config = getattr(cls, "__vecorm__", None)
    if not isinstance(config, PassageConfig):
        name = getattr(cls, "__name__", type(cls).__name__)
        raise ConfigurationError(
            f"{name} is not a passage model: declare it with vecorm.Passage and "
            "__vecorm__ = vecorm.PassageConfig(parent=..., source=...)"
        )
    return config


# Parent class -> its passage models, filled when a passage model is mapped (the mixin's
# after_mapper_constructed listener); entries vanish with the classes.
_by_parent: weakref.WeakKeyDictionary[type, weakref.WeakSet[type]] = weakref.WeakKeyDictionary()


def register_passage_model(cls: type) -> None:
    """Record ``cls`` as a passage model of its config's parent."""
    parent = passage_config(cls).parent
    _by_parent.setdefault(parent, weakref.WeakSet()).add(cls)


def passage_models(parent: type) -> list[type]:
    """The passage models of ``parent`` or of a class it inherits, by name."""
    if not _by_parent:
        return []
    found: set[type] = set()
    for klass in parent.__mro__:
        try:
            models = _by_parent.get(klass)
        except TypeError:
            continue
        if models:
            found.update(models)
    return sorted(found, key=lambda model: (model.__module__, model.__qualname__))
