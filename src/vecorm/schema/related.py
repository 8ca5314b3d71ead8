"""Text from related rows: ``SearchConfig(related={"author": ("name",)})`` resolved on the mappers.

A searchable model may embed text of the rows it references through a many-to-one
relationship. This module checks such a declaration once the mappers are configured (a
relationship may name a class declared further down the module, so it cannot be checked
earlier), describes each related attribute as a :class:`RelatedField`, and keeps the registry
that tells the flush hook which searchable models embed a given class's text::

    class Document(vecorm.Searchable, Base):
        __vecorm__ = vecorm.SearchConfig(fields=("title",), related={"author": ("name",)})
        author_id: Mapped[int | None] = mapped_column(ForeignKey("authors.id"))
        author: Mapped[Author | None] = relationship()

    related_fields(Document)          # (RelatedField('author', 'name', ...),)
    dependents_of(Author)             # [(Document, RelatedField('author', 'name', ...))]

:meth:`RelatedField.value_expression` is the attribute's value in SQL (a correlated scalar
subquery), so a backfill composes the same text as Python.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, String, and_, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Mapper, RelationshipDirection, RelationshipProperty
from sqlalchemy.sql.elements import KeyedColumnElement

from vecorm.errors import ConfigurationError
from vecorm.schema.config import SearchConfig
from vecorm.schema.pgcatalog import compare

__all__ = ["RelatedField", "dependents_of", "register_related", "related_fields"]


@dataclass(frozen=True, eq=False)
class RelatedField:
    """One related attribute a searchable model embeds: ``relationship.attribute``."""

    #: The searchable class that declares it.
    owner: type[Any]
    #: The many-to-one relationship's key on ``owner`` (``"author"``).
    relationship: str
    #: The attribute of the referenced class (``"name"``).
    attribute: str
    #: The referenced class.
    target: type[Any]
    #: Attribute keys of ``owner``'s foreign-key columns, in the order of ``target``'s
    #: primary key.
    local_keys: tuple[str, ...]
    #: ``owner``'s foreign-key columns, same order.
    local_columns: tuple[Column[Any], ...]
    #: ``target``'s primary-key columns, same order.
    remote_columns: tuple[Column[Any], ...]
    #: The text column of ``target`` that ``attribute`` maps.
    column: Column[Any]

    @property
    def name(self) -> str:
        """``relationship.attribute``, as in :attr:`SearchConfig.embedded_fields`."""
        return f"{self.relationship}.{self.attribute}"

    def value_expression(self) -> KeyedColumnElement[Any]:
        """The attribute's value for each row of ``owner``'s table: a scalar subquery on an
        alias of the target table (so a relationship to the model's own table works too),
        correlated by the foreign key; NULL when the key is NULL."""
        target = self.column.table.alias(f"vecorm_{self.relationship}")
        match = [
            compare(target.c[remote.key], "=", local)
            for local, remote in zip(self.local_columns, self.remote_columns, strict=True)
        ]
        return (
            select(target.c[self.column.key])
            .where(and_(*match))
            .scalar_subquery()
            .label(f"vecorm_{self.relationship}_{self.attribute}")
        )

    def __repr__(self) -> str:
        return f"RelatedField({self.relationship!r}, {self.attribute!r}, {self.target.__name__})"


# Resolved fields per searchable class, and referenced class -> the searchable classes that
# embed its text; filled when mappers are configured (the mixin's mapper_configured
# listener), entries vanish with the classes.
_fields: weakref.WeakKeyDictionary[type, tuple[RelatedField, ...]] = weakref.WeakKeyDictionary()
_by_target: weakref.WeakKeyDictionary[type, weakref.WeakSet[type]] = weakref.WeakKeyDictionary()


def register_related(cls: type[Any]) -> None:
    """Check ``cls``'s ``related`` declaration on its configured mapper and record it.

    Raises :class:`~vecorm.errors.ConfigurationError` naming the class for an unknown
    relationship, one that is not many-to-one, or an attribute that is not a text column.
    """
    config = getattr(cls, "__vecorm__", None)
    if not isinstance(config, SearchConfig) or not config.related:
        return
    mapper: Mapper[Any] = sa_inspect(cls)
    found: list[RelatedField] = []
    for name, attributes in config.related.items():
        prop = _relationship(cls, mapper, name)
        for attribute in attributes:
            found.append(_field(cls, prop, attribute))
    _fields[cls] = tuple(found)
    for related in found:
        _by_target.setdefault(related.target, weakref.WeakSet()).add(cls)


def related_fields(cls: type[Any]) -> tuple[RelatedField, ...]:
    """The :class:`RelatedField` s of a searchable class, in embedding order (empty without
    ``related``). Configures the mappers if they are not yet."""
    config = getattr(cls, "__vecorm__", None)
    if not isinstance(config, SearchConfig) or not config.related:
        return ()
    found = _fields.get(cls)
    if found is None:
        sa_inspect(cls).registry.configure(cascade=True)  # mapper_configured registers cls
        found = _fields.get(cls)
    if found is None:  # configured before vecorm's listener existed: resolve it now
        register_related(cls)
        found = _fields[cls]
    return found


def dependents_of(target: type[Any]) -> list[tuple[type[Any], RelatedField]]:
    """The searchable classes (and their fields) that embed text of ``target`` or of a class
    ``target`` inherits."""
    if not _by_target:
        return []
    found: list[tuple[type[Any], RelatedField]] = []
    for klass in target.__mro__:
        for owner in _by_target.get(klass, ()):
            found.extend(
                (owner, related) for related in _fields.get(owner, ()) if related.target is klass
            )
    return found


def _relationship(cls: type[Any], mapper: Mapper[Any], name: str) -> RelationshipProperty[Any]:
    def fail(message: str) -> ConfigurationError:
        return ConfigurationError(f"{cls.__name__}.__vecorm__: related {name!r} {message}")

    try:
        prop = mapper.get_property(name)
    except InvalidRequestError:
        raise fail(f"is not a relationship of {cls.__name__}") from None
    if not isinstance(prop, RelationshipProperty):
        raise fail(
            f"is not a relationship of {cls.__name__} (it is a {type(prop).__name__}); "
            f"declare {name}: Mapped[Other] = relationship()"
        )
    if prop.direction is not RelationshipDirection.MANYTOONE or prop.secondary is not None:
        raise fail(
            f"is a {prop.direction.name.lower().replace('to', '-to-')} relationship; only a "
            "many-to-one relationship (a foreign key on this table) can lend its text"
        )
    target_keys = list(prop.mapper.primary_key)
    pairs = dict((remote, local) for local, remote in prop.local_remote_pairs)
    if set(pairs) != set(target_keys):
        raise fail(
            f"joins {prop.mapper.class_.__name__} on columns that are not its primary key; "
            "related text needs a foreign key to the primary key"
        )
    return prop


def _field(cls: type[Any], prop: RelationshipProperty[Any], attribute: str) -> RelatedField:
    target: Mapper[Any] = prop.mapper
    name = f"{prop.key}.{attribute}"

    def fail(message: str) -> ConfigurationError:
        return ConfigurationError(f"{cls.__name__}.__vecorm__: related {name!r} {message}")

    try:
        attr = target.get_property(attribute)
    except InvalidRequestError:
        raise fail(f"is not a mapped column of {target.class_.__name__}") from None
    columns = getattr(attr, "columns", None)
    if not columns or not isinstance(columns[0], Column):
        raise fail(f"is not a mapped column of {target.class_.__name__}")
    column: Column[Any] = columns[0]
    if not is_text(column):
        raise fail(
            f"is a {column.type} column of {target.class_.__name__}; related attributes must "
            "be text (String/Text) columns"
        )
    remote = tuple(target.primary_key)
    if any(key.table is not column.table for key in remote):
        raise fail(
            f"lives in table {column.table.name}, not in the table of "
            f"{target.class_.__name__}'s primary key"
        )
    local_by_remote = {remote_column: local for local, remote_column in prop.local_remote_pairs}
    owner: Mapper[Any] = sa_inspect(cls)
    local_columns = tuple(local_by_remote[key] for key in remote)
    return RelatedField(
        owner=cls,
        relationship=prop.key,
        attribute=attribute,
        target=target.class_,
        local_keys=tuple(owner.get_property_by_column(local).key for local in local_columns),
        local_columns=local_columns,  # type: ignore[arg-type]
        remote_columns=remote,  # type: ignore[arg-type]
        column=column,
    )


def is_text(column: Column[Any]) -> bool:
    """A String/Text column, directly or through a TypeDecorator."""
    affinity = column.type._type_affinity
    return isinstance(column.type, String) or (
        isinstance(affinity, type) and issubclass(affinity, String)
    )
