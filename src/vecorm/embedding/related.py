"""Related text on flush: the values of ``SearchConfig(related=...)``, and the rows a change of
them makes stale.

For each row the flush hook embeds, :func:`related_values` finds the row it references after
this flush (the relationship's new value if it was assigned, else the foreign key) and reads
the related attributes from the session when they are loaded there (a rename in the same
flush included), else from the database: one query per referenced class and 1000 keys, never
a lazy load per row.

:func:`dependent_rows` goes the other way: when a referenced row's embedded attribute changes
(an author renamed), it loads the rows that reference it, one query per referencing class and
1000 keys, so that the hook re-embeds them in the same flush::

    author.name = "Ada Lovelace"
    session.commit()      # every Document of that author re-embedded, in batches
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, select, tuple_
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import InstanceState, Mapper, Session
from sqlalchemy.orm.base import PASSIVE_NO_INITIALIZE

from vecorm.schema.related import RelatedField, dependents_of, related_fields

__all__ = ["dependent_rows", "foreign_keys", "related_changed", "related_values"]

#: Keys per ``IN (...)``.
_LOAD_CHUNK = 1000


def related_changed(state: InstanceState[Any], fields: Iterable[RelatedField]) -> bool:
    """Whether the row was pointed at another related row (relationship or foreign key)."""
    for related in fields:
        keys = (related.relationship, *related.local_keys)
        if any(state.get_history(key, PASSIVE_NO_INITIALIZE).has_changes() for key in keys):
            return True
    return False


def foreign_keys(cls: type[Any]) -> tuple[str, ...]:
    """Attribute keys of the foreign keys ``cls``'s related text follows."""
    return tuple(
        dict.fromkeys(key for related in related_fields(cls) for key in related.local_keys)
    )


@dataclass
class _Lookup:
    """What one flush still has to read from the database: target class -> keys -> values."""

    wanted: dict[type[Any], set[tuple[Any, ...]]] = field(default_factory=dict)
    found: dict[type[Any], dict[tuple[Any, ...], dict[str, Any]]] = field(default_factory=dict)
    #: New rows of the session by (base class, primary key), built when first needed: a new
    #: author given its key by hand is referenced by key before it is in the identity map.
    new_rows: dict[tuple[type[Any], tuple[Any, ...]], Any] | None = None

    def new_row(self, session: Session, mapper: Mapper[Any], key: tuple[Any, ...]) -> Any:
        if self.new_rows is None:
            self.new_rows = {}
            for instance in session.new:
                state: InstanceState[Any] = sa_inspect(instance)
                owner = state.mapper
                values = tuple(
                    state.dict.get(owner.get_property_by_column(column).key)
                    for column in owner.primary_key
                )
                if None not in values:
                    self.new_rows[(owner.base_mapper.class_, values)] = instance
        return self.new_rows.get((mapper.base_mapper.class_, key))


def related_values(
    session: Session,
    instances: Iterable[tuple[Any, Mapping[str, Any] | None]],
) -> dict[int, tuple[Any, ...]]:
    """``id(instance)`` -> the values of its related attributes, in embedding order.

    ``instances`` are ``(instance, stored)``, ``stored`` holding the foreign keys the caller
    loaded for persistent rows whose keys are not in memory (``None``: none loaded).
    """
    lookup = _Lookup()
    # per instance, per related field: (value, None) when known, (None, key) to read
    plans: list[tuple[int, list[tuple[RelatedField, Any, tuple[Any, ...] | None]]]] = []
    for instance, stored in instances:
        fields = related_fields(type(instance))
        if not fields:
            continue
        state: InstanceState[Any] = sa_inspect(instance)
        plan: list[tuple[RelatedField, Any, tuple[Any, ...] | None]] = []
        for related in fields:
            target, key = _referenced(session, state, related, stored, lookup)
            if target is not None:
                target_state: InstanceState[Any] = sa_inspect(target)
                if related.attribute in target_state.dict:
                    plan.append((related, target_state.dict[related.attribute], None))
                    continue
                if target_state.identity is None:  # a new row's unset attribute: its default
                    plan.append((related, _default(related), None))
                    continue
                key = tuple(target_state.identity)  # loaded, but this attribute expired
            if key is not None:
                lookup.wanted.setdefault(related.target, set()).add(key)
            plan.append((related, None, key))
        plans.append((id(instance), plan))
    _load(session, lookup)
    values: dict[int, tuple[Any, ...]] = {}
    for ident, plan in plans:
        values[ident] = tuple(
            value
            if key is None
            else lookup.found.get(related.target, {}).get(key, {}).get(related.attribute)
            for related, value, key in plan
        )
    return values


def _referenced(
    session: Session,
    state: InstanceState[Any],
    related: RelatedField,
    stored: Mapping[str, Any] | None,
    lookup: _Lookup,
) -> tuple[Any, tuple[Any, ...] | None]:
    """``(object, None)`` when the referenced row is in memory, ``(None, key)`` when only its
    primary key is known, ``(None, None)`` when the row references nothing."""
    history = state.get_history(related.relationship, PASSIVE_NO_INITIALIZE)
    key_changed = any(
        state.get_history(key, PASSIVE_NO_INITIALIZE).has_changes() for key in related.local_keys
    )
    if history.has_changes():  # assigned: the flush copies its key into the foreign key
        added = [value for value in history.added if value is not None]
        return (added[0] if added else None), None
    if not key_changed and related.relationship in state.dict:
        return state.dict[related.relationship], None
    values = []
    for name in related.local_keys:
        if name in state.dict:
            values.append(state.dict[name])
        elif stored is not None and name in stored:
            values.append(stored[name])
        elif state.key is None:
            values.append(_column_default(state.mapper, name))
        else:  # a vector assigned by hand: its stored row was not read
            values.append(getattr(state.obj(), name))
    if any(value is None for value in values):
        return None, None
    key = tuple(values)
    target_mapper: Mapper[Any] = sa_inspect(related.target)
    loaded = session.identity_map.get(target_mapper.identity_key_from_primary_key(key))
    if loaded is None:
        loaded = lookup.new_row(session, target_mapper, key)
    if loaded is not None:
        return loaded, None
    return None, key


def _default(related: RelatedField) -> Any:
    default = related.column.default
    if default is not None and getattr(default, "is_scalar", False):
        return getattr(default, "arg", None)
    return None


def _column_default(mapper: Mapper[Any], name: str) -> Any:
    for column in getattr(mapper.attrs.get(name), "columns", ()):
        default = getattr(column, "default", None)
        if default is not None and getattr(default, "is_scalar", False):
            return default.arg
    return None


def _load(session: Session, lookup: _Lookup) -> None:
    """Read the wanted rows' related attributes: one query per class and 1000 keys."""
    for target, keys in lookup.wanted.items():
        mapper: Mapper[Any] = sa_inspect(target)
        remote = list(mapper.primary_key)
        by_name = {
            related.attribute: related.column
            for _, related in dependents_of(target)
            if related.target is target
        }
        names = sorted(by_name)
        columns = [by_name[name] for name in names]
        ordered = sorted(keys, key=repr)
        found = lookup.found.setdefault(target, {})
        for start in range(0, len(ordered), _LOAD_CHUNK):
            chunk = ordered[start : start + _LOAD_CHUNK]
            condition: ColumnElement[bool]
            if len(remote) == 1:
                condition = remote[0].in_([key[0] for key in chunk])
            else:
                condition = tuple_(*remote).in_(chunk)
            statement = select(*remote, *columns).where(condition)
            for row in session.execute(statement, bind_arguments={"mapper": mapper}):
                values = tuple(row)
                found[values[: len(remote)]] = dict(zip(names, values[len(remote) :], strict=True))


def dependent_rows(
    session: Session, embeds_in_flush: Mapping[type[Any], bool]
) -> tuple[list[Any], set[type[Any]]]:
    """Rows whose related text this flush changes, loaded into the session, and the classes
    whose such rows are left to workers (``embeds_in_flush[cls]`` false).

    ``embeds_in_flush`` answers for every searchable class with related fields that the
    caller knows of; a class missing from it is treated as embedding in the flush.
    """
    changed: dict[tuple[type[Any], RelatedField], set[tuple[Any, ...]]] = {}
    for instance in session.dirty:
        dependents = dependents_of(type(instance))
        if not dependents:
            continue
        state: InstanceState[Any] = sa_inspect(instance)
        if state.deleted or state.detached or state.identity is None:
            continue
        for owner, related in dependents:
            if state.get_history(related.attribute, PASSIVE_NO_INITIALIZE).has_changes():
                changed.setdefault((owner, related), set()).add(tuple(state.identity))
    rows: list[Any] = []
    left: set[type[Any]] = set()
    seen: set[int] = set()
    for (owner, related), keys in changed.items():
        if not embeds_in_flush.get(owner, True):
            left.add(owner)
            continue
        local = [getattr(owner, name) for name in related.local_keys]
        ordered = sorted(keys, key=repr)
        for start in range(0, len(ordered), _LOAD_CHUNK):
            chunk = ordered[start : start + _LOAD_CHUNK]
            condition: ColumnElement[bool]
            if len(local) == 1:
                condition = local[0].in_([key[0] for key in chunk])
            else:
                condition = tuple_(*local).in_(chunk)
            for row in session.scalars(select(owner).where(condition)):
                if id(row) not in seen:
                    seen.add(id(row))
                    rows.append(row)
    return rows, left
